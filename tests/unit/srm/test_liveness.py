"""Database and peer liveness, fed with samples (no IO, no clock).

Rules under test: a failed check is a Database Failure at once when no peer report
says otherwise (the table of `liveness`: a peer unheard, a peer that reached the
database after this node lost it, or an outage longer than the grace; a shared
outage waits, and ends with no event); slow checks count
only when neither the node's loop nor another write explains them, and two in a
row make the failure; events only on a change. A probe sees the peer alive once its
`alive_at` changes after the probe started, dead after `stale_after` of silence
while the database answers, and never judges from the baseline sample.
"""

from __future__ import annotations

import pytest

from presence_ha.server.srm.events import DbRestored, DbUnavailable, PeerAliveInDatabase, PeerDeadInDatabase
from presence_ha.server.srm.liveness import (
    ALONE_AFTER_S,
    DB_SLOW_CHECKS,
    FAILING_RECHECK_S,
    Check,
    DatabaseLiveness,
    DbSample,
    Finding,
    Outage,
    PeerDbReport,
    PeerLiveness,
    PeerRow,
    check_limit_s,
    check_pause_s,
    peer_fresh_s,
    probe_pause_s,
    stale_after_s,
)
from presence_ha.server.srm.table import NodeState, Reason

LIMIT = 10.0
OK = DbSample(Check.ANSWERED, LIMIT)
FAILED = DbSample(Check.FAILED, LIMIT)
SLOW = DbSample(Check.TIMED_OUT, LIMIT, loop_lag_s=0.0, since_write_s=60.0)


def test_a_failed_check_is_a_database_failure_at_once_and_an_answer_restores_it() -> None:
    db = DatabaseLiveness()
    assert db.sample(OK).event is None  # healthy to begin with: no news
    verdict = db.sample(FAILED)
    assert verdict.finding is Finding.UNREACHABLE and verdict.event == DbUnavailable() and not db.ok
    assert db.sample(FAILED).event is None  # no repeat
    assert db.sample(OK).event == DbRestored() and db.ok


def test_slow_checks_in_a_row_make_a_failure() -> None:
    db = DatabaseLiveness()
    for n in range(1, DB_SLOW_CHECKS):
        verdict = db.sample(SLOW)
        assert (verdict.finding, verdict.slow_in_a_row, verdict.event) == (Finding.SLOW, n, None)
    assert db.sample(SLOW).event == DbUnavailable()


def test_an_answer_resets_the_slow_count() -> None:
    db = DatabaseLiveness()
    db.sample(SLOW)
    db.sample(OK)
    assert db.sample(SLOW).event is None


@pytest.mark.parametrize(("sample", "finding"), [
    (DbSample(Check.TIMED_OUT, LIMIT, loop_lag_s=LIMIT * 0.2, since_write_s=60.0), Finding.NODE_SATURATED),
    (DbSample(Check.TIMED_OUT, LIMIT, loop_lag_s=0.5, since_write_s=LIMIT - 0.1), Finding.DATABASE_BUSY),
])
def test_a_slow_check_explained_by_the_node_or_a_busy_database_is_not_counted(sample: DbSample,
                                                                             finding: Finding) -> None:
    db = DatabaseLiveness()
    db.sample(SLOW)
    for _ in range(5):
        verdict = db.sample(sample)
        assert (verdict.finding, verdict.slow_in_a_row, verdict.event) == (finding, 1, None)
    assert db.sample(SLOW).event == DbUnavailable()  # not reset either: the next real slow check counts


def test_a_failed_action_is_a_failure_and_a_rebuilt_machine_assumes_health() -> None:
    db = DatabaseLiveness()
    assert db.failed() == DbUnavailable()
    assert db.failed() is None
    db.forget()
    assert db.ok and db.sample(OK).event is None  # no "restored" for a loss the new machine never saw
    assert db.sample(FAILED).event == DbUnavailable()


def test_timings() -> None:
    assert check_limit_s(60) == 60 and check_limit_s(1) == 5.0
    assert stale_after_s(15) == 30.5
    assert probe_pause_s(15) == 0.25 and probe_pause_s(0.4) == 0.1


def row(alive_at: object) -> PeerRow:
    return PeerRow(alive_at, NodeState.NORMAL, Reason.NORMAL, 3)


def test_the_first_sample_is_a_baseline_and_a_change_after_the_probe_is_life() -> None:
    peer = PeerLiveness(now=100.0)
    peer.observe(row("t1"), now=101.0)
    assert peer.renewed_at == 100.0  # the baseline is no sign of life
    assert peer.verdict(row("t1"), started=101.0, now=101.0, db_ok=True, stale_after=30.5, ha_enabled=True) is None
    peer.observe(row("t2"), now=102.0)
    alive = peer.verdict(row("t2"), started=101.0, now=102.0, db_ok=True, stale_after=30.5, ha_enabled=True)
    assert alive == PeerAliveInDatabase(NodeState.NORMAL, Reason.NORMAL, 3, True)


def test_silence_for_stale_after_is_death_only_while_the_database_answers() -> None:
    peer = PeerLiveness(now=0.0)
    peer.observe(row("t1"), now=1.0)
    peer.observe(row("t1"), now=20.0)
    assert peer.verdict(row("t1"), started=10.0, now=30.0, db_ok=True, stale_after=30.5, ha_enabled=True) is None
    assert peer.verdict(row("t1"), started=10.0, now=31.0, db_ok=False, stale_after=30.5, ha_enabled=True) is None
    dead = peer.verdict(None, started=10.0, now=31.0, db_ok=True, stale_after=30.5, ha_enabled=True)
    assert dead == PeerDeadInDatabase()


def test_a_renewal_before_the_probe_started_is_not_an_answer() -> None:
    peer = PeerLiveness(now=0.0)
    peer.observe(row("t1"), now=1.0)
    peer.observe(row("t2"), now=5.0)
    assert peer.verdict(row("t2"), started=6.0, now=7.0, db_ok=True, stale_after=30.5, ha_enabled=True) is None
    assert peer.verdict(None, started=4.0, now=7.0, db_ok=True, stale_after=30.5, ha_enabled=True) is None


# --- a database outage and the peer's reports (issue #17) --------------------------------

GRACE, FRESH = 20.0, 4.5


def at(check: Check, t: float, took: float = 0.1) -> DbSample:
    """A check that started at `t` and ended `took` later."""
    return DbSample(check, LIMIT, started_at=t, ended_at=t + took)


def paired(now: float = 0.0) -> DatabaseLiveness:
    """A healthy node that heard its peer (whose checks pass) at `now`."""
    db = DatabaseLiveness(grace_s=GRACE, peer_fresh=FRESH)
    assert db.sample(at(Check.ANSWERED, now - 1)).event is None
    assert db.peer_reported(PeerDbReport(), now) is None
    return db


def test_peer_unknown_a_failing_check_is_a_database_failure_at_once() -> None:
    never = DatabaseLiveness(grace_s=GRACE, peer_fresh=FRESH)
    verdict = never.sample(at(Check.FAILED, 10.0))
    assert (verdict.outage, verdict.event) == (Outage.PEER_UNKNOWN, DbUnavailable())
    silent = paired(now=0.0)  # heard at 0, then the link went quiet
    verdict = silent.sample(at(Check.FAILED, FRESH + 1))
    assert (verdict.outage, verdict.event) == (Outage.PEER_UNKNOWN, DbUnavailable())


def test_shared_outage_waits_and_ends_with_no_event_when_the_database_answers() -> None:
    db = paired(now=0.0)
    verdict = db.sample(at(Check.FAILED, 1.0))
    assert (verdict.finding, verdict.outage, verdict.event) == (Finding.UNREACHABLE, Outage.SHARED, None)
    assert db.ok and not db.checks_ok
    for t in range(2, 10):  # a promotion: the peer's checks fail too, its database last answered before t1
        assert db.peer_reported(PeerDbReport(ok=False, age_s=t + 0.5), float(t)) is None
        assert db.sample(at(Check.FAILED, t + 0.2)).event is None
    verdict = db.sample(at(Check.ANSWERED, 10.0))
    assert (verdict.event, db.ok, db.checks_ok) == (None, True, True)  # the machine never heard of it


def test_a_stale_ok_of_the_peer_is_no_proof_that_it_reaches_the_database() -> None:
    """The peer's heartbeat says "pass" because it has not checked since the outage began."""
    db = paired(now=0.0)
    db.sample(at(Check.FAILED, 1.0))
    assert db.peer_reported(PeerDbReport(ok=True, age_s=1.5), 2.0) is None  # answered at 0.5 < t1
    assert db.sample(at(Check.FAILED, 2.5)).outage is Outage.SHARED


def test_alone_the_peer_answered_after_my_outage_began_and_my_later_check_failed() -> None:
    db = paired(now=0.0)
    db.sample(at(Check.FAILED, 1.0))  # t1 = 1.1
    assert db.peer_reported(PeerDbReport(ok=True, age_s=0.2), 2.0) is None  # answered at 1.8, my last check at 1.0
    assert db.sample(at(Check.FAILED, 2.8)).outage is Outage.SHARED  # within the margin: my pool may be catching up
    assert db.peer_reported(PeerDbReport(ok=True, age_s=0.0), 3.0) is None  # later answers change nothing
    verdict = db.sample(at(Check.FAILED, 1.9 + ALONE_AFTER_S))  # still failing, the margin after its first answer
    assert (verdict.outage, verdict.event) == (Outage.ALONE, DbUnavailable())
    assert not db.ok and db.sample(at(Check.ANSWERED, 5.0)).event == DbRestored()


def test_alone_decided_when_the_peers_report_arrives_after_my_failing_check() -> None:
    db = paired(now=0.0)
    db.sample(at(Check.FAILED, 1.0))  # t1 = 1.1
    db.peer_reported(PeerDbReport(ok=True, age_s=3.0), 3.0)  # heard; its answer of 0.0 predates my outage
    assert db.sample(at(Check.FAILED, 2.0 + ALONE_AFTER_S)).event is None
    assert db.peer_reported(PeerDbReport(ok=True, age_s=3.5), 5.5) == DbUnavailable()  # answered at 2.0
    close = paired(now=0.0)
    close.sample(at(Check.FAILED, 1.0))
    close.peer_reported(PeerDbReport(ok=True, age_s=3.0), 3.0)
    close.sample(at(Check.FAILED, 2.0 + ALONE_AFTER_S))
    assert close.peer_reported(PeerDbReport(ok=True, age_s=0.5), 3.5) is None  # answered at 3.0: too close


def test_the_peers_answer_after_my_last_failing_check_began_waits_for_my_next_check() -> None:
    """The database may just have come back (the promotion ended): my next check decides."""
    db = paired(now=0.0)
    db.sample(at(Check.FAILED, 1.0))
    assert db.peer_reported(PeerDbReport(ok=True, age_s=0.0), 8.0) is None  # answered at 8.0 > my last start 1.0
    assert db.sample(at(Check.ANSWERED, 8.5)).event is None  # back for me too: a promotion, no event


def test_long_outage_is_a_database_failure_after_the_grace() -> None:
    db = paired(now=0.0)
    db.sample(at(Check.FAILED, 1.0))  # t1 = 1.1
    t = 2.0
    while t + 0.1 < 1.1 + GRACE:  # the peer's checks fail too: its database last answered at 0
        assert db.peer_reported(PeerDbReport(ok=False, age_s=t), t) is None
        assert db.sample(at(Check.FAILED, t)).event is None
        t += FAILING_RECHECK_S
    verdict = db.sample(at(Check.FAILED, t))
    assert (verdict.outage, verdict.event) == (Outage.LONG, DbUnavailable())


def test_another_failed_operation_starts_an_outage_and_follows_the_table() -> None:
    db = paired(now=0.0)
    assert db.failed(1.0) is None and not db.checks_ok  # shared so far
    assert db.peer_reported(PeerDbReport(ok=True, age_s=0.0), 2.0) is None  # answered at 2.0 > my last start 1.0
    assert db.failed(3.0) is None
    assert db.failed(2.0 + ALONE_AFTER_S) == DbUnavailable()  # alone


def test_report_and_answer_now() -> None:
    db = paired(now=0.0)  # answered at -0.9 (the check of paired() ended then)
    assert db.report(3.1) == PeerDbReport(ok=True, age_s=4.0)
    assert db.answer_now(PeerDbReport(ok=False, age_s=2.0))  # the peer fails, I pass: check and tell it
    assert not db.answer_now(PeerDbReport(ok=True, age_s=0.0))
    db.sample(at(Check.FAILED, 4.0))
    assert db.report(5.1) == PeerDbReport(ok=False, age_s=6.0)
    assert not db.answer_now(PeerDbReport(ok=False, age_s=2.0))  # both fail: nothing to tell


def test_a_rebuilt_machine_hears_of_a_failure_again_but_not_of_a_shared_outage() -> None:
    db = paired(now=0.0)
    db.sample(at(Check.FAILED, 1.0))
    db.peer_reported(PeerDbReport(ok=True, age_s=0.0), 2.0)
    assert db.sample(at(Check.FAILED, 2.0 + ALONE_AFTER_S)).event == DbUnavailable()
    db.forget()
    assert db.sample(at(Check.FAILED, 3.0 + ALONE_AFTER_S)).event == DbUnavailable()  # the next check tells it

    shared = paired(now=0.0)
    shared.sample(at(Check.FAILED, 1.0))
    shared.forget()
    assert shared.sample(at(Check.FAILED, 2.0)).event is None  # still a shared outage


def test_outage_timings() -> None:
    assert peer_fresh_s(3, 6) == 4.5 and peer_fresh_s(15, 60) == 22.5 and peer_fresh_s(1, 2) == 1.5
    assert peer_fresh_s(10, 11) == 10.5  # always below the heartbeat timeout
    assert check_pause_s(15, True) == 15 and check_pause_s(15, False) == FAILING_RECHECK_S
    assert check_pause_s(0.5, False) == 0.5
