"""The SRM core: one node's Server Recovery Manager as a pure state machine.

Rules of this module:
- Sans-IO (h11, etcd raft): `handle(event)` takes one fact and returns the actions
  for the runner, in the order they must run. No asyncio, sockets, database, clock,
  randomness or metrics here; time arrives as `TimerFired(name)`.
- Which transition happens is decided only by `table.py`. This module keeps the
  bookkeeping (the group epoch, the peer's last report, whether a move is in flight)
  and renders the table's `Step`s into actions with names, epochs and timer lengths.
- Every change of (state, reason, epoch) is persisted first (`PersistState`), and
  every change of (state, reason) is announced to the peer last (a heartbeat).
- Fencing (SPEC §9): each `MoveUsers` carries `epoch + 1`; the runner commits it only
  if the stored group epoch is still `epoch`. The epoch only grows: the machine keeps
  the largest epoch it has seen from the database, the peer or its own moves.
- The state is read-only from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from presence_ha.server.srm.actions import (
    Action,
    ActivateInactiveSessions,
    CancelTimer,
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
    TIMER_EVENTS,
    AdminRequestedRecovery,
    Event,
    HeartbeatReceived,
    MoveUsersFailed,
    PeerEnteredFailedMode,
    PeerMessage,
    PeerRebooted,
    PeerReleasedUsers,
    PeerReport,
    PeerRequestedAutoRecovery,
    PeerRequestedTakeBack,
    PeerRequestedTakeover,
    PeerTookBack,
    PeerTookOver,
    SrmStarted,
    Timer,
    TimerFired,
    UsersMoved,
    observed_epoch,
)
from presence_ha.server.srm.table import (
    SERVES,
    InvalidTransition,
    NodeState,
    Reason,
    ReasonRule,
    Serves,
    Step,
    Transition,
    ha_active,
    rows_for,
)


@dataclass(frozen=True)
class SrmTimers:
    """SPEC §5 timer parameters (seconds); every one is configurable for tests."""

    heartbeat_interval_s: float = 15
    heartbeat_timeout_s: float = 60
    init_heartbeat_timeout_s: float = 120
    critical_service_delay_s: float = 90
    auto_fallback_enabled: bool = False
    auto_fallback_delay_s: float = 1800


# Steps that become one message to the peer; the machine is passed for reason/epoch.
_PEER_MESSAGES: dict[Step, Callable[[SrmMachine], PeerMessage]] = {
    Step.ASK_PEER_TO_TAKE_OVER: lambda m: PeerRequestedTakeover(m.reason),
    Step.ASK_PEER_TO_RECOVER: lambda m: PeerRequestedAutoRecovery(m.reason),
    Step.ASK_PEER_TO_RELEASE: lambda m: PeerRequestedTakeBack(m.reason),
    Step.CONFIRM_TAKEOVER: lambda m: PeerTookOver(m.epoch),
    Step.CONFIRM_RELEASE: lambda m: PeerReleasedUsers(),
    Step.CONFIRM_TAKE_BACK: lambda m: PeerTookBack(m.epoch),
    Step.TELL_PEER_FAILED: lambda m: PeerEnteredFailedMode(m.reason),
    Step.TELL_PEER_REBOOTING: lambda m: PeerRebooted(),
    Step.SEND_HEARTBEAT: lambda m: m.heartbeat(),
}

_CANCELS: dict[Step, Timer] = {
    Step.CANCEL_INIT_TIMEOUT: Timer.INIT_HEARTBEAT_TIMEOUT,
    Step.CANCEL_SERVICE_DELAY: Timer.CRITICAL_SERVICE_DELAY,
    Step.CANCEL_AUTO_FALLBACK: Timer.AUTO_FALLBACK,
}

_FIXED: dict[Step, Action] = {
    Step.STOP_SERVICES: StopCriticalServices(),
    Step.START_SERVICES: StartCriticalServices(),
    Step.DISCONNECT_PEER_USERS: DisconnectClients(ClientKind.PEER_USERS),
    Step.DISCONNECT_OWN_USERS: DisconnectClients(ClientKind.OWN_USERS),
    Step.DEMOTE_OWN_USERS: DemoteClients(ClientKind.OWN_USERS),
    Step.DEMOTE_PEER_USERS: DemoteClients(ClientKind.PEER_USERS),
}


class SrmMachine:
    """The SRM of node `node` in a group with `peer` (None: a single-node group).

    `state`, `reason` and `epoch` are the persisted values to start from (a fresh
    node: Initializing / Initialization / 0). Feed `SrmStarted(epoch)` first.
    """

    def __init__(
        self,
        node: str,
        peer: str | None,
        timers: SrmTimers = SrmTimers(),
        *,
        ha_enabled: bool = True,
        state: NodeState = NodeState.INITIALIZING,
        reason: Reason = Reason.INITIALIZATION,
        epoch: int = 0,
    ) -> None:
        if peer == node:
            raise ValueError(f"a node cannot be its own peer: {node!r}")
        self._node, self._peer, self._timers = node, peer, timers
        self._ha_enabled = ha_enabled
        self._state, self._reason, self._epoch = state, reason, epoch
        self._persisted = (state, reason, epoch)
        self._peer_state: NodeState | None = None
        self._peer_reason: Reason | None = None
        self._move_in_flight = False
        self._move_retried = False  # the current takeover already retried once (table.dead_peer_moved_first)

    # --- read-only view -----------------------------------------------------------

    @property
    def node(self) -> str:
        """This node's name."""
        return self._node

    @property
    def peer(self) -> str | None:
        """The peer's name, or None."""
        return self._peer

    @property
    def timers(self) -> SrmTimers:
        """The SrmTimers in use."""
        return self._timers

    @property
    def ha_enabled(self) -> bool:
        """The group's HA switch."""
        return self._ha_enabled

    @property
    def state(self) -> NodeState:
        """Current NodeState."""
        return self._state

    @property
    def reason(self) -> Reason:
        """Current Reason."""
        return self._reason

    @property
    def epoch(self) -> int:
        """Largest group epoch seen."""
        return self._epoch

    @property
    def peer_state(self) -> NodeState | None:
        """Peer's last reported state."""
        return self._peer_state

    @property
    def peer_reason(self) -> Reason | None:
        """Peer's last reported reason."""
        return self._peer_reason

    @property
    def move_in_flight(self) -> bool:
        """A MoveUsers awaits its result."""
        return self._move_in_flight

    @property
    def move_retried(self) -> bool:
        """The takeover in progress retried its move after losing the compare-and-set."""
        return self._move_retried

    @property
    def serving(self) -> frozenset[str]:
        """Nodes whose assigned users this node accepts new logins for."""
        serves = SERVES[self._state]
        if serves is Serves.NONE:
            return frozenset()
        if serves is Serves.OWN or self._peer is None:
            return frozenset({self._node})
        return frozenset({self._node, self._peer})

    def heartbeat(self) -> HeartbeatReceived:
        """The heartbeat this node sends, as the peer will receive it."""
        return HeartbeatReceived(self._state, self._reason, self._epoch, self._ha_enabled)

    def allows(self, request: Event) -> bool:
        """Whether an admin request would be carried out now (for the web buttons)."""
        row = self._choose(request)
        return row is not None and Step.REFUSE not in row.steps

    # --- the one entry point --------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to execute, in order."""
        if isinstance(event, TimerFired):
            event = TIMER_EVENTS[event.name]()
        self._observe(event)
        row = self._choose(event)
        if row is None and not isinstance(event, PeerReport):
            raise InvalidTransition(self._state, event)
        before = (self._state, self._reason)
        if row is not None:
            self._state = row.to if row.to is not None else self._state
            self._reason = self._resolve_reason(row.reason, event)
        actions = self._persist()
        if isinstance(event, PeerReport) and ha_active(self, event):
            actions.append(StartTimer(Timer.HEARTBEAT_TIMEOUT, self._timers.heartbeat_timeout_s))
        for step in row.steps if row is not None else ():
            actions.extend(self._render(step, event))
        if (self._state, self._reason) != before and self._peer is not None:
            actions.append(NotifyPeer(self.heartbeat()))
        return actions

    # --- internals --------------------------------------------------------------------

    def _choose(self, event: Event) -> Transition | None:
        """The first row whose guard passes (None: no row; for peer reports, no change)."""
        for row in rows_for(self._state, self._peer_state, event):
            if row.guard is None or row.guard(self, event):
                return row
        return None

    def _observe(self, event: Event) -> None:
        """Bookkeeping that every event does before its row applies."""
        if isinstance(event, (SrmStarted, AdminRequestedRecovery)):
            self._peer_state = self._peer_reason = None
            self._move_in_flight = self._move_retried = False
        if isinstance(event, PeerReport):
            self._peer_state, self._peer_reason = event.peer_state, event.peer_reason
        if isinstance(event, (UsersMoved, MoveUsersFailed)):
            self._move_in_flight = False
        if isinstance(event, UsersMoved):
            self._move_retried = False
        seen = observed_epoch(event)
        if seen is not None and seen > self._epoch:
            self._epoch = seen

    def _resolve_reason(self, rule: Reason | ReasonRule, event: Event) -> Reason:
        if isinstance(rule, Reason):
            return rule
        if rule is ReasonRule.FROM_EVENT:
            reason: Reason = event.reason  # type: ignore[attr-defined]  # rows use it only on events with a reason
            return reason
        if rule is ReasonRule.FROM_PEER and self._peer_reason is not None:
            return self._peer_reason
        return self._reason

    def _persist(self) -> list[Action]:
        now = (self._state, self._reason, self._epoch)
        if now == self._persisted:
            return []
        self._persisted = now
        return [PersistState(*now)]

    def _render(self, step: Step, event: Event) -> list[Action]:
        """One table step as concrete actions (none if it does not apply here)."""
        if step in _FIXED:
            return [_FIXED[step]]
        if step in _CANCELS:
            return [CancelTimer(_CANCELS[step])]
        if step in _PEER_MESSAGES:
            return [NotifyPeer(_PEER_MESSAGES[step](self))] if self._peer is not None else []
        if step is Step.REFUSE:
            return [RefuseAdminRequest(event, self._state)]
        if step is Step.ACTIVATE_OWN_SESSIONS:
            return [ActivateInactiveSessions(self._node)]
        if self._peer is None:
            return []  # the remaining steps all concern the peer
        if step is Step.TAKE_PEER_USERS:
            return self._move(None, event)
        if step is Step.TAKE_BACK_OWN_USERS:
            return self._move(self._node, event)
        if step is Step.ACTIVATE_PEER_SESSIONS:
            return [ActivateInactiveSessions(self._peer)]
        if step is Step.PROBE_PEER:
            return [CheckPeerLiveness(self._peer)]
        return self._arm(step)

    def _move(self, assigned_node: str | None, event: Event) -> list[Action]:
        assert self._peer is not None
        self._move_retried = isinstance(event, MoveUsersFailed)  # the fenced retry (table.dead_peer_moved_first)
        self._move_in_flight = True
        return [MoveUsers(self._peer, self._node, self._epoch + 1, assigned_node)]

    def _arm(self, step: Step) -> list[Action]:
        t = self._timers
        if step is Step.ARM_HEARTBEAT:
            return [StartTimer(Timer.HEARTBEAT, t.heartbeat_interval_s)]
        if step is Step.ARM_SERVICE_DELAY:
            return [StartTimer(Timer.CRITICAL_SERVICE_DELAY, t.critical_service_delay_s)]
        if not self._ha_enabled:
            return []  # SPEC §1: with HA off nothing moves automatically
        if step is Step.ARM_INIT_TIMEOUT:
            return [StartTimer(Timer.INIT_HEARTBEAT_TIMEOUT, t.init_heartbeat_timeout_s)]
        if step is Step.ARM_AUTO_FALLBACK and t.auto_fallback_enabled:
            return [StartTimer(Timer.AUTO_FALLBACK, t.auto_fallback_delay_s)]
        if step is Step.ARM_AUTO_FALLBACK:
            return []
        raise AssertionError(f"unrendered step {step}")

