"""A database outage on two machines with their liveness (issue #17 part 3).

Rules under test: when both nodes lose the database for a few seconds (a promotion
of the replicated database), no user moves, no state changes, nobody's session
ends, and both carry on when it answers again; when one node alone loses it, the
liveness feeds Database Failure and the pair reaches SPEC §6 row 13 (or row 22 on
a failed-over pair) as before; an outage longer than `db_outage_grace_s` is a
Database Failure after all.
"""

from __future__ import annotations

import pytest

from presence_ha.server.srm.machine import SrmTimers
from presence_ha.server.srm.table import NodeState as S
from presence_ha.server.srm.table import Reason as R
from tests.unit.srm.harness import Pair

TIMERS = SrmTimers()  # SPEC defaults: heartbeats every 15 s
LAB = SrmTimers(heartbeat_interval_s=3, heartbeat_timeout_s=6, init_heartbeat_timeout_s=9,
                critical_service_delay_s=1)  # the lab's timers
GRACE = 20.0


@pytest.fixture(params=[TIMERS, LAB], ids=["spec-timers", "lab-timers"])
def timers(request: pytest.FixtureRequest) -> SrmTimers:
    return request.param


def normal_pair(timers: SrmTimers) -> Pair:
    pair = Pair(timers, db_checks=True, db_outage_grace_s=GRACE)
    pair.start_both()
    pair.advance(2 * timers.heartbeat_interval_s)  # heartbeats and checks flow
    assert all(pair.pair_of(n) == (S.NORMAL, R.NORMAL) for n in pair.nodes), pair.transcript
    pair.moves.clear()  # the take-back of the start
    return pair


def snapshot(pair: Pair) -> tuple:
    return (dict(pair.active), pair.db_epoch, {n: set(node.sessions) for n, node in pair.nodes.items()},
            {n: node.persisted for n, node in pair.nodes.items()})


@pytest.mark.parametrize("stagger", [0.0, 0.4, 0.9])
@pytest.mark.parametrize("outage", [3.0, 9.0, GRACE - 3])
def test_both_lose_the_database_for_a_few_seconds_nothing_moves(timers: SrmTimers, outage: float,
                                                                  stagger: float) -> None:
    pair = normal_pair(timers)
    before, transitions = snapshot(pair), len(pair.transcript)
    pair.db_lost("n1")
    pair.advance(stagger)  # within one check: the nodes' pools notice it at different times
    pair.db_lost("n2")
    pair.advance(outage)
    pair.db_back("n1")
    pair.db_back("n2")
    pair.advance(3 * timers.heartbeat_interval_s)
    assert pair.transcript[transitions:] == []  # no transition at all: nobody moved, redirected or stopped
    assert pair.moves == [] and snapshot(pair) == before
    assert all(node.liveness.ok and node.liveness.checks_ok for node in pair.nodes.values())


@pytest.mark.parametrize("failing", ["n1", "n2"])
def test_one_loses_the_database_row_13(timers: SrmTimers, failing: str) -> None:
    pair = normal_pair(timers)
    pair.db_lost(failing)
    pair.advance(4)  # its peer answers its report at once; its check ALONE_AFTER_S later decides
    backup = pair.other(failing)
    assert pair.pair_of(failing) == (S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, R.DATABASE_FAILURE)
    assert pair.pair_of(backup) == (S.RUNNING_IN_BACKUP_MODE, R.DATABASE_FAILURE)
    assert all(active == backup for active in pair.active.values())
    pair.db_back(failing)
    pair.advance(2)
    assert pair.pair_of(failing) == (S.FAILED_OVER, R.DATABASE_FAILURE)
    pair.fallback(failing)
    assert all(pair.pair_of(n) == (S.NORMAL, R.NORMAL) for n in pair.nodes) and pair.users_home()


@pytest.mark.parametrize("failing", ["n1", "n2"])
def test_the_backup_alone_loses_the_database_row_22(failing: str) -> None:
    pair = normal_pair(LAB)
    pair.service_down(failing)
    pair.advance(LAB.critical_service_delay_s + 1)
    pair.fix_services(failing)
    assert pair.pair_of(failing) == (S.FAILED_OVER, R.CRITICAL_SERVICES_DOWN)
    backup = pair.other(failing)
    pair.db_lost(backup)
    pair.advance(4)
    r = R.AUTO_RECOVER_DATABASE_FAILURE
    assert (pair.pair_of(failing), pair.pair_of(backup)) == ((S.BACKUP_ACTIVATED, r), (S.FAILOVER_AFFECTED_SERVICES, r))
    assert all(active == failing for active in pair.active.values())


def test_an_outage_longer_than_the_grace_is_a_database_failure() -> None:
    pair = normal_pair(LAB)
    epoch, active = pair.db_epoch, dict(pair.active)
    pair.db_lost("n1")
    pair.db_lost("n2")
    pair.advance(GRACE - 2)
    assert all(pair.pair_of(n) == (S.NORMAL, R.NORMAL) for n in pair.nodes)
    pair.advance(4)
    assert all(not node.liveness.ok for node in pair.nodes.values())
    assert all(node.sessions == set() for node in pair.nodes.values())  # §9: no database, no serving
    assert (pair.db_epoch, pair.active) == (epoch, active)  # no move could commit without the database


def test_a_silent_peer_leaves_no_grace() -> None:
    """The link is down as well: nobody says the outage is shared; stop at once, as before."""
    pair = normal_pair(LAB)
    pair.link_up = False
    pair.advance(LAB.heartbeat_interval_s * 2)
    pair.db_lost("n1")
    pair.advance(1.0)  # its next check
    assert not pair.nodes["n1"].liveness.ok and pair.nodes["n1"].sessions == set()
