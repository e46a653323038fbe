"""SPEC §6: each of the 24 state pairs, reached by its cause and left by its way back.

Rules: every scenario runs on two machines wired by `harness.Pair`, is parametrized
over which node fails (the mirror image, which also swaps the initialization
leader), asserts the row's exact (state, reason) pair on both nodes, then applies
the row's admin way back and asserts Normal / Normal with every user on its
assigned node. The harness checks after every event that no user is served twice.
"""

from __future__ import annotations

import pytest

from presence_ha.server.srm.machine import SrmTimers
from presence_ha.server.srm.table import NodeState as S
from presence_ha.server.srm.table import Reason as R
from tests.unit.srm.harness import Pair

FAST = SrmTimers()
AUTO_FALLBACK = SrmTimers(auto_fallback_enabled=True)


@pytest.fixture(params=["n1", "n2"], ids=["node1-fails", "node2-fails"])
def failing(request: pytest.FixtureRequest) -> str:
    return request.param


def started(timers: SrmTimers = FAST) -> Pair:
    pair = Pair(timers)
    pair.start_both()
    assert_row(pair, "n1", (S.NORMAL, R.NORMAL), (S.NORMAL, R.NORMAL))
    return pair


def assert_row(pair: Pair, f: str, failing_pair: tuple, backup_pair: tuple | None) -> None:
    assert pair.pair_of(f) == failing_pair, pair.transcript[-12:]
    if backup_pair is not None:
        assert pair.pair_of(pair.other(f)) == backup_pair, pair.transcript[-12:]


def assert_normal(pair: Pair) -> None:
    for name in pair.nodes:
        assert pair.pair_of(name) == (S.NORMAL, R.NORMAL), pair.transcript[-12:]
    assert pair.users_home()
    assert pair.invalid == []
    pair.advance(200)  # and it stays so: heartbeats flow, nothing times out
    assert all(pair.pair_of(n) == (S.NORMAL, R.NORMAL) for n in pair.nodes)
    for name, node in pair.nodes.items():
        assert node.sessions == {u for u, home in pair.assigned.items() if home == name}


def manual_failover_done(f: str) -> Pair:
    pair = started()
    pair.failover(f)
    assert_row(pair, f, (S.IDLE, R.ON_ADMIN_REQUEST), (S.RUNNING_IN_BACKUP_MODE, R.ON_ADMIN_REQUEST))
    assert all(pair.active[u] == pair.other(f) for u in pair.active)
    return pair


def critical_service_failover(f: str, timers: SrmTimers = FAST) -> Pair:
    pair = started(timers)
    pair.service_down(f)
    pair.advance(timers.critical_service_delay_s - 1)
    assert pair.pair_of(f) == (S.NORMAL, R.NORMAL)
    pair.advance(2)
    return pair


def fallback_to(pair: Pair, f: str) -> None:
    pair.fallback(f)
    assert_normal(pair)


def test_row_01_healthy() -> None:
    assert_normal(started())


def test_row_02_manual_failover_in_progress(failing: str) -> None:
    pair = started()
    pair.hold_moves = True
    pair.failover(failing)
    assert_row(pair, failing, (S.FAILING_OVER, R.ON_ADMIN_REQUEST), (S.TAKING_OVER, R.ON_ADMIN_REQUEST))
    pair.release_moves()
    assert_row(pair, failing, (S.IDLE, R.ON_ADMIN_REQUEST), (S.RUNNING_IN_BACKUP_MODE, R.ON_ADMIN_REQUEST))
    fallback_to(pair, failing)


def test_row_03_manual_failover_done(failing: str) -> None:
    pair = manual_failover_done(failing)
    fallback_to(pair, failing)


def test_row_04_manual_fallback_in_progress(failing: str) -> None:
    pair = manual_failover_done(failing)
    pair.hold_moves = True
    pair.fallback(failing)
    assert_row(pair, failing, (S.TAKING_BACK, R.ON_ADMIN_REQUEST), (S.FALLING_BACK, R.ON_ADMIN_REQUEST))
    pair.release_moves()
    assert_normal(pair)


def test_row_05_idle_node_srm_restarted(failing: str) -> None:
    pair = manual_failover_done(failing)
    pair.restart_srm(failing)
    assert_row(pair, failing, (S.IDLE, R.INITIALIZATION), (S.RUNNING_IN_BACKUP_MODE, R.ON_ADMIN_REQUEST))
    fallback_to(pair, failing)


def test_row_06_both_restarted_during_manual_failover(failing: str) -> None:
    pair = manual_failover_done(failing)
    backup = pair.other(failing)
    pair.crash(failing, silent=True)
    pair.crash(backup, silent=True)
    pair.start(failing)
    pair.start(backup)
    assert_row(pair, failing, (S.IDLE, R.INITIALIZATION), (S.RUNNING_IN_BACKUP_MODE, R.INITIALIZATION))
    fallback_to(pair, failing)


def test_row_07_backup_srm_restarted(failing: str) -> None:
    pair = manual_failover_done(failing)
    pair.restart_srm(pair.other(failing))
    assert_row(pair, failing, (S.IDLE, R.ON_ADMIN_REQUEST), (S.RUNNING_IN_BACKUP_MODE, R.INITIALIZATION))
    fallback_to(pair, failing)


def test_row_08_backup_srm_restarted_while_taking_over(failing: str) -> None:
    pair = started()
    pair.hold_moves = True
    pair.failover(failing)
    pair.restart_srm(pair.other(failing))  # the held move dies with the old SRM
    assert_row(pair, failing, (S.FAILING_OVER, R.ON_ADMIN_REQUEST), (S.TAKING_OVER, R.INITIALIZATION))
    pair.release_moves()
    assert_row(pair, failing, (S.IDLE, R.ON_ADMIN_REQUEST), (S.RUNNING_IN_BACKUP_MODE, R.INITIALIZATION))
    fallback_to(pair, failing)


def test_row_09_srm_restarted_while_taking_back(failing: str) -> None:
    pair = manual_failover_done(failing)
    pair.hold_moves = True
    pair.fallback(failing)
    pair.restart_srm(failing)
    assert_row(pair, failing, (S.TAKING_BACK, R.INITIALIZATION), (S.FALLING_BACK, R.ON_ADMIN_REQUEST))
    pair.release_moves()
    assert_normal(pair)


def test_row_10_automatic_fallback_in_progress(failing: str) -> None:
    pair = critical_service_failover(failing, AUTO_FALLBACK)
    pair.fix_services(failing)
    assert pair.pair_of(failing) == (S.FAILED_OVER, R.CRITICAL_SERVICES_DOWN)
    pair.hold_moves = True
    pair.advance(AUTO_FALLBACK.auto_fallback_delay_s + 1)
    assert_row(pair, failing, (S.TAKING_BACK, R.AUTOMATIC_FALLBACK), (S.FALLING_BACK, R.AUTOMATIC_FALLBACK))
    pair.release_moves()
    assert_normal(pair)


def test_row_11_services_back_by_admin(failing: str) -> None:
    pair = critical_service_failover(failing)
    pair.fix_services(failing)
    backup = (S.RUNNING_IN_BACKUP_MODE, R.CRITICAL_SERVICES_DOWN)
    assert_row(pair, failing, (S.FAILED_OVER, R.CRITICAL_SERVICES_DOWN), backup)
    pair.advance(AUTO_FALLBACK.auto_fallback_delay_s + 1)  # auto fallback is off
    assert_row(pair, failing, (S.FAILED_OVER, R.CRITICAL_SERVICES_DOWN), backup)
    fallback_to(pair, failing)


def test_row_11_services_back_by_reboot(failing: str) -> None:
    pair = critical_service_failover(failing)
    pair.crash(failing, silent=True)
    pair.nodes[failing].service_fault = False  # the reboot cured it
    pair.start(failing)
    backup = (S.RUNNING_IN_BACKUP_MODE, R.CRITICAL_SERVICES_DOWN)
    assert_row(pair, failing, (S.FAILED_OVER, R.INITIALIZATION), backup)
    fallback_to(pair, failing)


def test_row_12_critical_service_down(failing: str) -> None:
    pair = critical_service_failover(failing)
    failed = (S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, R.CRITICAL_SERVICES_DOWN)
    assert_row(pair, failing, failed, (S.RUNNING_IN_BACKUP_MODE, R.CRITICAL_SERVICES_DOWN))
    pair.fallback(failing)  # not offered while the services are down
    assert pair.refused and pair.pair_of(failing) == failed
    pair.fix_services(failing)
    fallback_to(pair, failing)


def test_row_13_database_failure(failing: str) -> None:
    pair = started()
    pair.db_down(failing)
    failed = (S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, R.DATABASE_FAILURE)
    assert_row(pair, failing, failed, (S.RUNNING_IN_BACKUP_MODE, R.DATABASE_FAILURE))
    pair.advance(300)
    assert_row(pair, failing, failed, (S.RUNNING_IN_BACKUP_MODE, R.DATABASE_FAILURE))
    pair.db_up(failing)
    assert pair.pair_of(failing) == (S.FAILED_OVER, R.DATABASE_FAILURE)
    fallback_to(pair, failing)


def recover(pair: Pair) -> None:
    pair.recover()
    assert_normal(pair)


def test_row_14_critical_service_start_failed(failing: str) -> None:
    pair = manual_failover_done(failing)
    pair.nodes[failing].service_fault = True
    pair.fallback(failing)
    both = (S.RUNNING_IN_FAILED_MODE, R.CRITICAL_SERVICE_START_FAILED)
    assert_row(pair, failing, both, both)
    pair.nodes[failing].service_fault = False
    recover(pair)


def test_row_15_critical_service_down_on_backup(failing: str) -> None:
    pair = manual_failover_done(failing)
    backup = pair.other(failing)
    pair.service_down(backup)
    pair.advance(FAST.critical_service_delay_s + 1)
    both = (S.RUNNING_IN_FAILED_MODE, R.CRITICAL_SERVICES_DOWN)
    assert_row(pair, failing, both, both)
    pair.fix_services(backup)
    recover(pair)


@pytest.mark.parametrize("how", ["srm-not-running", "silent"])
def test_row_16_peer_down(failing: str, how: str) -> None:
    pair = started()
    pair.crash(failing, silent=how == "silent")
    if how == "silent":
        pair.advance(FAST.heartbeat_timeout_s + FAST.heartbeat_interval_s)
    assert_row(pair, pair.other(failing), (S.RUNNING_IN_BACKUP_MODE, R.PEER_DOWN), None)
    pair.start(failing)
    assert_row(pair, failing, (S.FAILED_OVER, R.INITIALIZATION), None)
    fallback_to(pair, failing)


def test_row_16_network_lost_then_recovery(failing: str) -> None:
    pair = started()
    pair.link_up = False
    pair.db_down(failing)  # cut off from everything: it stops serving at once
    pair.advance(FAST.heartbeat_timeout_s + FAST.heartbeat_interval_s)
    assert_row(pair, pair.other(failing), (S.RUNNING_IN_BACKUP_MODE, R.PEER_DOWN), None)
    pair.link_up = True
    pair.db_up(failing)
    pair.advance(FAST.heartbeat_interval_s)
    both = (S.RUNNING_IN_FAILED_MODE, R.UNKNOWN)
    assert_row(pair, failing, both, both)
    recover(pair)


def test_row_16_link_fault_alone_moves_nobody(failing: str) -> None:
    pair = started()
    pair.link_up = False
    pair.advance(10 * FAST.heartbeat_timeout_s)
    assert_row(pair, failing, (S.NORMAL, R.NORMAL), (S.NORMAL, R.NORMAL))
    pair.link_up = True
    assert_normal(pair)


def test_row_17_peer_reboot(failing: str) -> None:
    pair = started()
    pair.shutdown(failing)
    assert_row(pair, pair.other(failing), (S.RUNNING_IN_BACKUP_MODE, R.PEER_REBOOT), None)
    pair.start(failing)
    assert_row(pair, failing, (S.FAILED_OVER, R.INITIALIZATION), (S.RUNNING_IN_BACKUP_MODE, R.PEER_REBOOT))
    fallback_to(pair, failing)


def test_row_18_peer_down_during_initialization(failing: str) -> None:
    pair = started()
    backup = pair.other(failing)
    pair.crash(failing, silent=True)
    pair.crash(backup, silent=True)
    pair.start(backup)
    pair.advance(FAST.init_heartbeat_timeout_s - 1)
    assert pair.pair_of(backup) == (S.INITIALIZING, R.INITIALIZATION)
    pair.advance(2)
    assert_row(pair, backup, (S.RUNNING_IN_BACKUP_MODE, R.PEER_DOWN_DURING_INITIALIZATION), None)
    pair.start(failing)
    assert_row(pair, failing, (S.FAILED_OVER, R.INITIALIZATION),
               (S.RUNNING_IN_BACKUP_MODE, R.PEER_DOWN_DURING_INITIALIZATION))
    fallback_to(pair, failing)


def test_row_19_take_over_users_failed(failing: str) -> None:
    pair = started()
    pair.fail_next_move = True
    pair.failover(failing)
    both = (S.RUNNING_IN_FAILED_MODE, R.TAKE_OVER_USERS_FAILED)
    assert_row(pair, failing, both, both)
    recover(pair)


def test_row_20_take_back_users_failed(failing: str) -> None:
    pair = manual_failover_done(failing)
    pair.fail_next_move = True
    pair.fallback(failing)
    both = (S.RUNNING_IN_FAILED_MODE, R.TAKE_BACK_USERS_FAILED)
    assert_row(pair, failing, both, both)
    recover(pair)


def test_row_21_internal_error(failing: str) -> None:
    pair = started()
    pair.internal_error(failing)
    both = (S.RUNNING_IN_FAILED_MODE, R.UNKNOWN)
    assert_row(pair, failing, both, both)
    recover(pair)


def healthy_failed_over(f: str) -> Pair:
    pair = critical_service_failover(f)
    pair.fix_services(f)
    assert_row(pair, f, (S.FAILED_OVER, R.CRITICAL_SERVICES_DOWN), (S.RUNNING_IN_BACKUP_MODE, R.CRITICAL_SERVICES_DOWN))
    return pair


def test_row_22_auto_recover_database_failure(failing: str) -> None:
    pair = healthy_failed_over(failing)
    backup = pair.other(failing)
    pair.db_down(backup)
    r = R.AUTO_RECOVER_DATABASE_FAILURE
    assert_row(pair, failing, (S.BACKUP_ACTIVATED, r), (S.FAILOVER_AFFECTED_SERVICES, r))
    assert all(active == failing for active in pair.active.values())
    pair.db_up(backup)
    fallback_to(pair, backup)


def test_row_23_auto_recover_critical_service_down(failing: str) -> None:
    pair = healthy_failed_over(failing)
    backup = pair.other(failing)
    pair.service_down(backup)
    pair.advance(FAST.critical_service_delay_s + 1)
    r = R.AUTO_RECOVER_CRITICAL_SERVICE_DOWN
    assert_row(pair, failing, (S.BACKUP_ACTIVATED, r), (S.FAILOVER_AFFECTED_SERVICES, r))
    assert all(active == failing for active in pair.active.values())
    pair.fix_services(backup)
    fallback_to(pair, backup)


def test_row_24_ha_not_enabled_properly(failing: str) -> None:
    pair = Pair()
    pair.nodes[failing].ha_enabled = False
    pair.start_both()
    both = (S.UNKNOWN, R.UNKNOWN)
    assert_row(pair, failing, both, both)
    for name in pair.nodes:  # the way back: fix HA, restart the SRM on both nodes
        pair.crash(name, silent=True)
        pair.nodes[name].ha_enabled = True
    pair.start_both()
    assert_normal(pair)
