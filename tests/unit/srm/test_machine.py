"""`SrmMachine` alone: its API contract with the runner.

Rules: one machine, events in, actions out; no harness. These pin down what the
runner relies on: ordering (persist first, stop before telling the peer), timers,
fencing epochs, refusals and `InvalidTransition`.
"""

from __future__ import annotations

import ast
import inspect

import pytest

from presence_ha.server.srm import machine as machine_module
from presence_ha.server.srm import table as table_module
from presence_ha.server.srm.actions import (
    CheckPeerLiveness,
    ClientKind,
    DemoteClients,
    DisconnectClients,
    MoveUsers,
    NotifyPeer,
    PersistState,
    RefuseAdminRequest,
    StartCriticalServices,
    StartTimer,
    StopCriticalServices,
)
from presence_ha.server.srm.events import (
    AdminRequestedFailover,
    AdminRequestedFallback,
    CriticalServiceDelayElapsed,
    HeartbeatReceived,
    HeartbeatTimedOut,
    MoveUsersFailed,
    PeerAliveInDatabase,
    PeerConnectionRefused,
    PeerReleasedUsers,
    PeerRequestedTakeBack,
    PeerRequestedTakeover,
    PeerTookBack,
    PeerTookOver,
    SrmStarted,
    Timer,
    TimerFired,
    UsersMoved,
)
from presence_ha.server.srm.machine import SrmMachine, SrmTimers
from presence_ha.server.srm.table import InvalidTransition, NodeState, Reason

N, R = NodeState, Reason


def normal_machine(node: str = "n1", peer: str = "n2") -> SrmMachine:
    m = SrmMachine(node, peer, state=N.NORMAL, reason=R.NORMAL, epoch=4)
    m.handle(SrmStarted(epoch=4))
    m.handle(HeartbeatReceived(N.NORMAL, R.NORMAL, 4))
    assert m.state is N.TAKING_BACK  # a restarted node reclaims its users first
    m.handle(UsersMoved(5))
    assert (m.state, m.reason, m.epoch) == (N.NORMAL, R.NORMAL, 5)
    return m


def test_timer_defaults_match_spec() -> None:
    t = SrmTimers()
    assert (t.heartbeat_interval_s, t.heartbeat_timeout_s, t.init_heartbeat_timeout_s) == (15, 60, 120)
    assert (t.critical_service_delay_s, t.auto_fallback_enabled, t.auto_fallback_delay_s) == (90, False, 1800)


def test_start_arms_heartbeat_and_init_timeout() -> None:
    actions = SrmMachine("n1", "n2").handle(SrmStarted())
    assert StartTimer(Timer.HEARTBEAT, 15) in actions
    assert StartTimer(Timer.INIT_HEARTBEAT_TIMEOUT, 120) in actions


def test_single_node_group_is_normal_and_silent() -> None:
    m = SrmMachine("solo", None)
    actions = m.handle(SrmStarted())
    assert (m.state, m.reason) == (N.NORMAL, R.NORMAL)
    assert not any(isinstance(a, (NotifyPeer, StartTimer)) and getattr(a, "name", None) != Timer.HEARTBEAT
                   for a in actions)
    assert m.serving == frozenset({"solo"})
    assert isinstance(m.handle(AdminRequestedFailover())[-1], RefuseAdminRequest)


def test_manual_failover_redirects_only_once_the_peer_took_over() -> None:
    """Make before break (issue #18): the node keeps its clients (and admits no new
    login) until the peer confirms the committed move; then it stops its services,
    which redirects the clients to the peer that serves them already."""
    m = normal_machine()
    actions = m.handle(AdminRequestedFailover())
    assert isinstance(actions[0], PersistState) and actions[0].state is N.FAILING_OVER
    demote = actions.index(DemoteClients(ClientKind.OWN_USERS))
    assert demote < actions.index(NotifyPeer(PeerRequestedTakeover(R.ON_ADMIN_REQUEST)))  # no traffic, still open
    assert StopCriticalServices() not in actions
    assert m.serving == frozenset()
    actions = m.handle(PeerTookOver(6))
    assert (m.state, m.reason) == (N.IDLE, R.ON_ADMIN_REQUEST)
    assert actions.index(PersistState(N.IDLE, R.ON_ADMIN_REQUEST, 6)) < actions.index(
        DisconnectClients(ClientKind.OWN_USERS)) < actions.index(StopCriticalServices())


def test_fault_failover_still_stops_first() -> None:
    m = normal_machine()
    actions = m.handle(CriticalServiceDelayElapsed())
    assert actions.index(StopCriticalServices()) < actions.index(
        NotifyPeer(PeerRequestedTakeover(R.CRITICAL_SERVICES_DOWN)))


def test_fallback_disconnects_the_peer_users_only_once_taken_back() -> None:
    m = normal_machine()
    m.handle(PeerRequestedTakeover(R.ON_ADMIN_REQUEST))
    m.handle(UsersMoved(6))
    actions = m.handle(PeerRequestedTakeBack(R.ON_ADMIN_REQUEST))
    assert m.state is N.FALLING_BACK
    assert actions.index(DemoteClients(ClientKind.PEER_USERS)) < actions.index(NotifyPeer(PeerReleasedUsers()))
    assert DisconnectClients(ClientKind.PEER_USERS) not in actions
    assert m.serving == frozenset({"n1"})
    actions = m.handle(PeerTookBack(7))
    assert (m.state, m.epoch) == (N.NORMAL, 7)
    assert DisconnectClients(ClientKind.PEER_USERS) in actions


def test_takeover_move_is_fenced_by_the_next_epoch() -> None:
    m = normal_machine()
    actions = m.handle(PeerRequestedTakeover(R.CRITICAL_SERVICES_DOWN))
    assert MoveUsers("n2", "n1", 6, None) in actions
    assert m.move_in_flight
    actions = m.handle(UsersMoved(6))
    assert (m.state, m.reason, m.epoch) == (N.RUNNING_IN_BACKUP_MODE, R.CRITICAL_SERVICES_DOWN, 6)
    assert NotifyPeer(PeerTookOver(6)) in actions
    assert m.serving == frozenset({"n1", "n2"})


def test_timer_fired_is_the_specific_event() -> None:
    a, b = normal_machine(), normal_machine()
    assert a.handle(TimerFired(Timer.HEARTBEAT_TIMEOUT)) == b.handle(HeartbeatTimedOut())
    assert CheckPeerLiveness("n2") in a.handle(TimerFired(Timer.HEARTBEAT_TIMEOUT))


def test_peer_alive_in_database_is_a_link_fault() -> None:
    m = normal_machine()
    m.handle(HeartbeatTimedOut())
    actions = m.handle(PeerAliveInDatabase(N.NORMAL, R.NORMAL, 5))
    assert (m.state, m.reason) == (N.NORMAL, R.NORMAL)
    assert not any(isinstance(a, MoveUsers) for a in actions)


def test_unknown_event_raises_invalid_transition() -> None:
    m = normal_machine()
    with pytest.raises(InvalidTransition) as info:
        m.handle(UsersMoved(9))
    assert info.value.state is N.NORMAL


def test_refused_admin_request_changes_nothing() -> None:
    m = normal_machine()
    assert not m.allows(AdminRequestedFallback())
    assert m.allows(AdminRequestedFailover())
    actions = m.handle(AdminRequestedFallback())
    assert actions == [RefuseAdminRequest(AdminRequestedFallback(), N.NORMAL)]


def test_restart_from_idle_keeps_services_stopped() -> None:
    m = SrmMachine("n1", "n2", state=N.IDLE, reason=R.ON_ADMIN_REQUEST, epoch=3)
    actions = m.handle(SrmStarted(epoch=3))
    assert (m.state, m.reason) == (N.IDLE, R.INITIALIZATION)
    assert StopCriticalServices() in actions and StartCriticalServices() not in actions


def test_ha_off_never_arms_automatic_timers() -> None:
    m = SrmMachine("n1", "n2", ha_enabled=False)
    actions = m.handle(SrmStarted())
    assert (m.state, m.reason) == (N.NORMAL, R.NORMAL)
    assert [a.name for a in actions if isinstance(a, StartTimer)] == [Timer.HEARTBEAT]


def test_state_is_read_only() -> None:
    m = normal_machine()
    with pytest.raises(AttributeError):
        m.state = N.IDLE  # type: ignore[misc]


@pytest.mark.parametrize("module", [machine_module, table_module])
def test_core_imports_no_io(module: object) -> None:
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"asyncio", "socket", "sqlalchemy", "time", "random", "prometheus_client", "logging"}


def taking_over_dead_peer(epoch: int = 5) -> SrmMachine:
    m = normal_machine()
    actions = m.handle(PeerConnectionRefused())
    assert (m.state, m.reason) == (N.TAKING_OVER, R.PEER_DOWN)
    assert MoveUsers("n2", "n1", epoch + 1, None) in actions
    return m


def test_takeover_retries_once_when_a_dead_peer_moved_the_epoch_first() -> None:
    """Issue #18: the peer committed a move (epoch 6) and died before telling us. Our
    takeover expected 5 and lost; the peer is unreachable, so we retry, fenced on 6."""
    m = taking_over_dead_peer()
    actions = m.handle(MoveUsersFailed(6, "fencing conflict", stored_epoch=6, peer_reachable=False))
    assert (m.state, m.reason, m.epoch) == (N.TAKING_OVER, R.PEER_DOWN, 6)
    assert MoveUsers("n2", "n1", 7, None) in actions and m.move_in_flight and m.move_retried
    assert m.serving == frozenset()  # still no new logins until the retry commits
    actions = m.handle(UsersMoved(7))
    assert (m.state, m.epoch, m.move_retried) == (N.RUNNING_IN_BACKUP_MODE, 7, False)
    assert NotifyPeer(PeerTookOver(7)) in actions


def test_second_lost_compare_and_set_is_row_19() -> None:
    m = taking_over_dead_peer()
    m.handle(MoveUsersFailed(6, "", stored_epoch=6, peer_reachable=False))
    m.handle(MoveUsersFailed(7, "", stored_epoch=7, peer_reachable=False))
    assert (m.state, m.reason) == (N.RUNNING_IN_FAILED_MODE, R.TAKE_OVER_USERS_FAILED)


@pytest.mark.parametrize("failure", [
    MoveUsersFailed(6, "peer alive", stored_epoch=6, peer_reachable=True),  # the peer may serve them: no retry
    MoveUsersFailed(6, "database error"),  # nothing read: no epoch to retry with
    MoveUsersFailed(6, "stale", stored_epoch=4, peer_reachable=False),  # the epoch did not move on
])
def test_no_retry_unless_the_epoch_moved_and_the_peer_is_gone(failure: MoveUsersFailed) -> None:
    m = taking_over_dead_peer()
    actions = m.handle(failure)
    assert (m.state, m.reason) == (N.RUNNING_IN_FAILED_MODE, R.TAKE_OVER_USERS_FAILED)
    assert not any(isinstance(a, MoveUsers) for a in actions)


def test_no_retry_for_a_takeover_the_peer_asked_for() -> None:
    """The peer asked (it was alive): a lost compare-and-set stays SPEC row 19."""
    m = normal_machine()
    m.handle(PeerRequestedTakeover(R.ON_ADMIN_REQUEST))
    m.handle(MoveUsersFailed(6, "", stored_epoch=6, peer_reachable=False))
    assert (m.state, m.reason) == (N.RUNNING_IN_FAILED_MODE, R.TAKE_OVER_USERS_FAILED)
