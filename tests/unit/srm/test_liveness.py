"""Database and peer liveness, fed with samples (no IO, no clock).

Rules under test: a failed check is a Database Failure at once; slow checks count
only when neither the node's loop nor another write explains them, and two in a
row make the failure; events only on a change. A probe sees the peer alive once its
`alive_at` changes after the probe started, dead after `stale_after` of silence
while the database answers, and never judges from the baseline sample.
"""

from __future__ import annotations

import pytest

from presence_ha.server.srm.events import DbRestored, DbUnavailable, PeerAliveInDatabase, PeerDeadInDatabase
from presence_ha.server.srm.liveness import (
    DB_SLOW_CHECKS,
    Check,
    DatabaseLiveness,
    DbSample,
    Finding,
    PeerLiveness,
    PeerRow,
    check_limit_s,
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
