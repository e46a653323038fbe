"""The SRM transition table: every rule that moves a node between SPEC §6 states.

Rules of this module:
- Everything that decides a transition lives here, as data. `machine.py` only looks
  rows up, checks their guards and renders their steps.
- `TRANSITIONS` is keyed by (my state, event type); `ANY_STATE` holds the rows of
  events that mean the same in every state unless `TRANSITIONS` overrides them.
- Peer reports (`HeartbeatReceived`, `PeerAliveInDatabase`) go to the joint tables
  (h11's joint state): `JOINT_OVERRIDES`, then `JOINT` keyed by (my state, the peer's
  reported state), then `JOINT_DEFAULTS`. Only the pairs that need action are listed;
  every other pair is consistent and changes nothing.
- A key maps to a tuple of rows; the first row whose guard passes wins. Any other
  event with no passing row raises `InvalidTransition`. Deliberately ignored events
  are rows with no steps. Guards are the named pure functions below.
- One row per line (a long row wraps, within 120 characters), each row and key
  citing the SPEC (`# §6 row N` for the state pairs).
- A state decides its own rows: every state has explicit rows in `TRANSITIONS` or
  `JOINT`, except the states listed in `DEFAULTS_ONLY`, which deliberately take
  every event from `ANY_STATE` and the joint defaults (a unit test prints the whole
  (state, event) matrix and fails on a state that is in neither).
- Safety (SPEC §9): a move takes users only from a node that has stopped,
  disconnected or demoted them, or is dead (no database lease). A manual failover
  (Failing Over) and a fallback (Falling Back) demote: the sessions get no traffic
  and the node admits no new login of those users, but it keeps their connections
  until the peer confirms the committed move, then redirects them to the peer, which
  serves them already (make before break, issue #18). A node that loses the database
  stops its services. States entered while a move is in flight accept no new logins
  (`SERVES`); the move's epoch compare-and-set settles any race.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

from presence_ha.server.srm.events import (
    AdminRequestedFailover,
    AdminRequestedFallback,
    AdminRequestedRecovery,
    AutoFallbackDelayElapsed,
    CriticalServiceDelayElapsed,
    CriticalServiceDown,
    CriticalServicesRestored,
    CriticalServiceStartFailed,
    DbRestored,
    DbUnavailable,
    Event,
    HeartbeatDue,
    HeartbeatTimedOut,
    InitHeartbeatTimedOut,
    InternalErrorOccurred,
    MoveUsersFailed,
    NodeShuttingDown,
    PeerConnectionRefused,
    PeerDeadInDatabase,
    PeerEnteredFailedMode,
    PeerRebooted,
    PeerReleasedUsers,
    PeerReport,
    PeerRequestedAutoRecovery,
    PeerRequestedTakeBack,
    PeerRequestedTakeover,
    PeerTookBack,
    PeerTookOver,
    SrmStarted,
    UsersMoved,
)


class NodeState(Enum):
    """SPEC §6 node states; values are the display strings of `ha status`."""

    INITIALIZING = "Initializing"
    IDLE = "Idle"
    NORMAL = "Normal"
    RUNNING_IN_BACKUP_MODE = "Running in Backup Mode"
    TAKING_OVER = "Taking Over"
    FAILING_OVER = "Failing Over"
    FAILED_OVER = "Failed Over"
    FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING = "Failed Over with Critical Services Not Running"
    FALLING_BACK = "Falling Back"
    TAKING_BACK = "Taking Back"
    RUNNING_IN_FAILED_MODE = "Running in Failed Mode"
    UNKNOWN = "Unknown"
    BACKUP_ACTIVATED = "Backup Activated"
    FAILOVER_AFFECTED_SERVICES = "Failover Affected Services"


class Reason(Enum):
    """SPEC §6 reasons; values are the display strings of `ha status`."""

    NORMAL = "Normal"
    ON_ADMIN_REQUEST = "On Admin Request"
    INITIALIZATION = "Initialization"
    AUTOMATIC_FALLBACK = "Automatic Fallback"
    CRITICAL_SERVICES_DOWN = "Critical Services Down"
    DATABASE_FAILURE = "Database Failure"
    CRITICAL_SERVICE_START_FAILED = "Critical Service Start Failed"
    PEER_DOWN = "Peer Down"
    PEER_REBOOT = "Peer Reboot"
    PEER_DOWN_DURING_INITIALIZATION = "Peer Down During Initialization"
    TAKE_OVER_USERS_FAILED = "Take Over Users Failed"
    TAKE_BACK_USERS_FAILED = "Take Back Users Failed"
    UNKNOWN = "Unknown"
    AUTO_RECOVER_DATABASE_FAILURE = "Auto Recover Database Failure"
    AUTO_RECOVER_CRITICAL_SERVICE_DOWN = "Auto Recover Critical Service Down"


class Serves(Enum):
    """Whose users a node in a state accepts new logins for."""

    NONE = "nobody"
    OWN = "own users"
    ALL = "own and peer users"


class ReasonRule(Enum):
    """A row's reason when it is not a fixed `Reason`."""

    SAME = "same"  # keep the current reason
    FROM_EVENT = "event's"  # the reason the event carries
    FROM_PEER = "peer's"  # the reason the peer reported


class Step(Enum):
    """What a row does; `machine.py` renders each step into concrete actions."""

    STOP_SERVICES = auto()  # StopCriticalServices
    START_SERVICES = auto()  # StartCriticalServices
    TAKE_PEER_USERS = auto()  # MoveUsers(peer -> me, every user active on the peer)
    TAKE_BACK_OWN_USERS = auto()  # MoveUsers(peer -> me, users assigned to me)
    ASK_PEER_TO_TAKE_OVER = auto()  # NotifyPeer(PeerRequestedTakeover(reason))
    ASK_PEER_TO_RECOVER = auto()  # NotifyPeer(PeerRequestedAutoRecovery(reason))
    ASK_PEER_TO_RELEASE = auto()  # NotifyPeer(PeerRequestedTakeBack(reason))
    CONFIRM_TAKEOVER = auto()  # NotifyPeer(PeerTookOver(epoch))
    CONFIRM_RELEASE = auto()  # NotifyPeer(PeerReleasedUsers())
    CONFIRM_TAKE_BACK = auto()  # NotifyPeer(PeerTookBack(epoch))
    TELL_PEER_FAILED = auto()  # NotifyPeer(PeerEnteredFailedMode(reason))
    TELL_PEER_REBOOTING = auto()  # NotifyPeer(PeerRebooted())
    SEND_HEARTBEAT = auto()  # NotifyPeer(HeartbeatReceived(...))
    DISCONNECT_PEER_USERS = auto()  # DisconnectClients(PEER_USERS)
    DISCONNECT_OWN_USERS = auto()  # DisconnectClients(OWN_USERS)
    DEMOTE_OWN_USERS = auto()  # DemoteClients(OWN_USERS)
    DEMOTE_PEER_USERS = auto()  # DemoteClients(PEER_USERS)
    ACTIVATE_PEER_SESSIONS = auto()  # ActivateInactiveSessions(peer)
    ACTIVATE_OWN_SESSIONS = auto()  # ActivateInactiveSessions(me)
    PROBE_PEER = auto()  # CheckPeerLiveness(peer)
    REFUSE = auto()  # RefuseAdminRequest(event, state)
    ARM_HEARTBEAT = auto()
    ARM_INIT_TIMEOUT = auto()
    CANCEL_INIT_TIMEOUT = auto()
    ARM_SERVICE_DELAY = auto()
    CANCEL_SERVICE_DELAY = auto()
    ARM_AUTO_FALLBACK = auto()
    CANCEL_AUTO_FALLBACK = auto()


class InvalidTransition(Exception):
    """No row for `event` in `state`. The runner logs it, counts it and feeds
    `InternalErrorOccurred` (SPEC §6 row 21)."""

    def __init__(self, state: NodeState, event: Event) -> None:
        super().__init__(f"no transition from {state.value!r} on {event!r}")
        self.state = state
        self.event = event


class MachineView(Protocol):
    """What guards may read of a machine."""

    @property
    def node(self) -> str: ...
    @property
    def peer(self) -> str | None: ...
    @property
    def ha_enabled(self) -> bool: ...
    @property
    def state(self) -> NodeState: ...
    @property
    def reason(self) -> Reason: ...
    @property
    def peer_state(self) -> NodeState | None: ...
    @property
    def move_in_flight(self) -> bool: ...
    @property
    def move_retried(self) -> bool: ...


Guard = Callable[[MachineView, Event], bool]


@dataclass(frozen=True)
class Transition:
    """One row: go to `to` (None: stay) with `reason`, doing `steps`, if `guard`."""

    to: NodeState | None
    reason: Reason | ReasonRule
    steps: tuple[Step, ...] = ()
    guard: Guard | None = None


# --- guards (pure; named so the table reads as prose) ------------------------------


def ha_active(view: MachineView, event: Event) -> bool:
    """HA is on and the group has a peer: users may move."""
    return view.ha_enabled and view.peer is not None


def ha_inactive(view: MachineView, event: Event) -> bool:
    """HA off or a single-node group: nothing moves (SPEC §1)."""
    return not ha_active(view, event)


def ha_mismatch(view: MachineView, event: Event) -> bool:
    """The peer's HA switch differs from ours: HA not enabled properly (row 24)."""
    return isinstance(event, PeerReport) and event.peer_ha_enabled != view.ha_enabled


def peer_is_normal(view: MachineView, event: Event) -> bool:
    """The peer can take our users: it is Normal and HA is on."""
    return ha_active(view, event) and view.peer_state is NodeState.NORMAL


def peer_failed_over_healthy(view: MachineView, event: Event) -> bool:
    """The peer is Failed Over with its services up: auto recovery (rows 22-23)."""
    return view.peer_state is NodeState.FAILED_OVER


def peer_never_seen(view: MachineView, event: Event) -> bool:
    """No report from the peer since this SRM started (row 18)."""
    return view.peer_state is None


def is_leader(view: MachineView, event: Event) -> bool:
    """Breaks the tie when both nodes initialize: the smaller node name goes first."""
    return view.peer is not None and view.node < view.peer


def admin_request(view: MachineView, event: Event) -> bool:
    """The current reason is On Admin Request."""
    return view.reason is Reason.ON_ADMIN_REQUEST


def local_fault(view: MachineView, event: Event) -> bool:
    """The current reason is a fault of this node's services or database."""
    return view.reason in (Reason.CRITICAL_SERVICES_DOWN, Reason.DATABASE_FAILURE)


def auto_recovering(view: MachineView, event: Event) -> bool:
    """The current reason is an auto recovery (rows 22-23)."""
    return view.reason in (
        Reason.AUTO_RECOVER_DATABASE_FAILURE,
        Reason.AUTO_RECOVER_CRITICAL_SERVICE_DOWN,
    )


def initializing(view: MachineView, event: Event) -> bool:
    """The current reason is Initialization: this SRM restarted recently."""
    return view.reason is Reason.INITIALIZATION


def no_move_in_flight(view: MachineView, event: Event) -> bool:
    """No `MoveUsers` of this node awaits its result (one move at a time)."""
    return not view.move_in_flight


PEER_DEATH = frozenset({Reason.PEER_DOWN, Reason.PEER_REBOOT, Reason.PEER_DOWN_DURING_INITIALIZATION})


def dead_peer_moved_first(view: MachineView, event: Event) -> bool:
    """A takeover of a dead peer's users lost its compare-and-set because the epoch
    moved on: the peer committed a move and died before telling us (issue #18). The
    peer is still unreachable, so nobody else can hold the users: retry once with the
    epoch found (the retry is fenced again; a second loss is SPEC row 19)."""
    return (isinstance(event, MoveUsersFailed) and view.reason in PEER_DEATH and not view.move_retried
            and event.stored_epoch is not None and event.stored_epoch >= event.epoch and not event.peer_reachable)


def peer_failed_while_running(view: MachineView, event: Event) -> bool:
    """The peer is in failed mode and this node runs (not restarting, not failed)."""
    settled = view.state not in (NodeState.RUNNING_IN_FAILED_MODE, NodeState.UNKNOWN)
    restarting = view.state is NodeState.INITIALIZING or initializing(view, event)
    return view.peer_state is NodeState.RUNNING_IN_FAILED_MODE and settled and not restarting


def peer_is_initializing(view: MachineView, event: Event) -> bool:
    """The peer just (re)started and needs our state now, not in 15 s."""
    return view.peer_state is NodeState.INITIALIZING


# --- the tables ---------------------------------------------------------------------

S = NodeState
R = Reason
T = Transition
SAME = ReasonRule.SAME
FROM_EVENT = ReasonRule.FROM_EVENT
FROM_PEER = ReasonRule.FROM_PEER
K = Step

IGNORE = (T(None, SAME),)  # §6: deliberately ignored (explicit, never a silent default)
_FAIL_UNKNOWN = (T(S.RUNNING_IN_FAILED_MODE, R.UNKNOWN, (K.STOP_SERVICES, K.TELL_PEER_FAILED)),)  # §6 row 21
_RESTART = (
    T(S.NORMAL, R.NORMAL, (K.START_SERVICES, K.SEND_HEARTBEAT, K.ARM_HEARTBEAT),  # §6 row 1 (HA off)
      guard=ha_inactive),
    T(S.INITIALIZING, R.INITIALIZATION,  # §6 rows 5-9
      (K.STOP_SERVICES, K.SEND_HEARTBEAT, K.ARM_HEARTBEAT, K.ARM_INIT_TIMEOUT)),
)
_RESTART_IDLE = (
    T(S.NORMAL, R.NORMAL, (K.START_SERVICES, K.SEND_HEARTBEAT, K.ARM_HEARTBEAT),  # §6 row 1 (HA off)
      guard=ha_inactive),
    T(S.IDLE, R.INITIALIZATION, (K.STOP_SERVICES, K.SEND_HEARTBEAT, K.ARM_HEARTBEAT)),  # §6 rows 5-6
)
_TAKEN_OVER = (
    T(S.IDLE, SAME, (K.DISCONNECT_OWN_USERS, K.STOP_SERVICES), guard=admin_request),  # §6 row 3, §8: peer serves
    T(S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, SAME, guard=local_fault),  # §6 rows 12-13
    T(S.FAILED_OVER, SAME, (K.START_SERVICES, K.ARM_AUTO_FALLBACK)),  # §6 row 11 (Initialization)
)
_TOOK_BACK = (
    T(S.TAKING_BACK, R.INITIALIZATION, (K.DISCONNECT_PEER_USERS, K.START_SERVICES),  # §6 row 9: reclaim own users too
      guard=initializing),
    T(S.NORMAL, R.NORMAL, (K.DISCONNECT_PEER_USERS, K.CANCEL_SERVICE_DELAY)),  # §6 rows 4 -> 1: make before break
)
_REFUSE = (T(None, SAME, (K.REFUSE,)),)  # §7: the admin button is not offered in this state

TRANSITIONS: dict[tuple[NodeState, type[Event]], tuple[Transition, ...]] = {
    (S.INITIALIZING, InitHeartbeatTimedOut): (  # §6 row 18
        T(None, SAME, (K.PROBE_PEER,), guard=peer_never_seen),  # §6 row 18
        T(None, SAME),  # §6 row 18
    ),
    (S.INITIALIZING, HeartbeatTimedOut): (T(None, SAME, (K.PROBE_PEER,)),),  # §6 row 18
    (S.INITIALIZING, PeerDeadInDatabase): (  # §6 row 18
        T(S.TAKING_OVER, R.PEER_DOWN_DURING_INITIALIZATION,  # §6 row 18
          (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.TAKE_PEER_USERS)),
    ),
    (S.INITIALIZING, PeerRequestedTakeover): (  # §6 row 8
        T(S.TAKING_OVER, FROM_EVENT, (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.TAKE_PEER_USERS)),  # §6 row 8
    ),
    (S.INITIALIZING, PeerRequestedTakeBack): (  # §6 row 9 (mirror)
        T(S.FALLING_BACK, R.INITIALIZATION,  # §6 row 9 (mirror)
          (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.DISCONNECT_PEER_USERS, K.CONFIRM_RELEASE)),
    ),
    (S.IDLE, SrmStarted): _RESTART_IDLE,  # §6 rows 5-6
    (S.IDLE, AdminRequestedRecovery): _RESTART_IDLE,  # §6 rows 5-6
    (S.IDLE, AdminRequestedFallback): (T(S.TAKING_BACK, R.ON_ADMIN_REQUEST, (K.START_SERVICES,)),),  # §6 rows 3 -> 4
    (S.NORMAL, AdminRequestedFailover): (  # §6 row 2
        T(S.FAILING_OVER, R.ON_ADMIN_REQUEST, (K.DEMOTE_OWN_USERS, K.ASK_PEER_TO_TAKE_OVER),  # §6 row 2, §8
          guard=peer_is_normal),
        *_REFUSE,  # §6 row 2
    ),
    (S.NORMAL, PeerRequestedTakeover): (  # §6 rows 2, 12, 13
        T(S.TAKING_OVER, FROM_EVENT, (K.TAKE_PEER_USERS,), guard=ha_active),  # §6 rows 2, 12, 13
        T(None, SAME),  # §6 rows 2, 12, 13
    ),
    (S.NORMAL, HeartbeatTimedOut): (  # §6 row 16 / §9: check the database first
        T(None, SAME, (K.PROBE_PEER,), guard=ha_active),  # §6 row 16 / §9: check the database first
        T(None, SAME),  # §6 row 16 / §9: check the database first
    ),
    (S.NORMAL, PeerDeadInDatabase): (  # §6 row 16
        T(S.TAKING_OVER, R.PEER_DOWN, (K.TAKE_PEER_USERS,), guard=ha_active),  # §6 row 16
        T(None, SAME),  # §6 row 16
    ),
    (S.NORMAL, PeerConnectionRefused): (  # §6 row 16 / §9 at once
        T(S.TAKING_OVER, R.PEER_DOWN, (K.TAKE_PEER_USERS,), guard=ha_active),  # §6 row 16 / §9 at once
        T(None, SAME),  # §6 row 16 / §9 at once
    ),
    (S.NORMAL, PeerRebooted): (  # §6 row 17
        T(S.TAKING_OVER, R.PEER_REBOOT, (K.TAKE_PEER_USERS,), guard=ha_active),  # §6 row 17
        T(None, SAME),  # §6 row 17
    ),
    (S.NORMAL, CriticalServiceDelayElapsed): (  # §6 row 12
        T(S.FAILING_OVER, R.CRITICAL_SERVICES_DOWN, (K.STOP_SERVICES, K.ASK_PEER_TO_TAKE_OVER),  # §6 row 12
          guard=peer_is_normal),
        T(None, SAME),  # §6 row 12
    ),
    (S.NORMAL, DbUnavailable): (  # §6 row 13
        T(S.FAILING_OVER, R.DATABASE_FAILURE, (K.STOP_SERVICES, K.ASK_PEER_TO_TAKE_OVER),  # §6 row 13
          guard=peer_is_normal),
        T(None, SAME, (K.STOP_SERVICES,)),  # §6 row 13
    ),
    (S.NORMAL, DbRestored): (T(None, SAME, (K.START_SERVICES,)),),  # §4 (HA off: services come back)
    (S.NORMAL, MoveUsersFailed): IGNORE,  # §9 a duplicate move lost its compare-and-set: nothing changed
    (S.TAKING_OVER, UsersMoved): (  # §6 rows 22-23 / row 3
        T(S.BACKUP_ACTIVATED, SAME, (K.ACTIVATE_PEER_SESSIONS, K.CONFIRM_TAKEOVER),  # §6 rows 22-23 / row 3
          guard=auto_recovering),
        T(S.RUNNING_IN_BACKUP_MODE, SAME, (K.ACTIVATE_PEER_SESSIONS, K.CONFIRM_TAKEOVER)),  # §6 rows 22-23 / row 3
    ),
    (S.TAKING_OVER, MoveUsersFailed): (  # §6 row 19
        T(None, SAME, (K.TAKE_PEER_USERS,), guard=dead_peer_moved_first),  # §6 rows 16-18: fenced retry, once
        T(S.RUNNING_IN_FAILED_MODE, R.TAKE_OVER_USERS_FAILED, (K.STOP_SERVICES, K.TELL_PEER_FAILED)),  # §6 row 19
    ),
    (S.TAKING_OVER, PeerRequestedTakeBack): IGNORE,  # §9 not releasing users while taking them; the epoch settles it
    (S.FAILING_OVER, PeerTookOver): _TAKEN_OVER,  # §6 rows 3, 11-13
    (S.FAILING_OVER, HeartbeatTimedOut): _FAIL_UNKNOWN,  # §6 row 21: the peer died while taking over
    (S.FAILING_OVER, PeerConnectionRefused): _FAIL_UNKNOWN,  # §6 row 21
    (S.FAILING_OVER, PeerRebooted): _FAIL_UNKNOWN,  # §6 row 21
    (S.RUNNING_IN_BACKUP_MODE, PeerRequestedTakeBack): (  # §6 rows 4, 10
        T(S.FALLING_BACK, FROM_EVENT, (K.DEMOTE_PEER_USERS, K.CONFIRM_RELEASE)),  # §6 rows 4, 10, §8
    ),
    (S.RUNNING_IN_BACKUP_MODE, PeerRequestedTakeover): (  # §6 row 8: repeated request
        T(None, SAME, (K.CONFIRM_TAKEOVER,)),  # §6 row 8: repeated request
    ),
    (S.RUNNING_IN_BACKUP_MODE, DbUnavailable): (  # §6 row 22 / row 13
        T(S.FAILOVER_AFFECTED_SERVICES, R.AUTO_RECOVER_DATABASE_FAILURE,  # §6 row 22 / row 13
          (K.STOP_SERVICES, K.ASK_PEER_TO_RECOVER), guard=peer_failed_over_healthy),
        T(S.RUNNING_IN_FAILED_MODE, R.DATABASE_FAILURE, (K.STOP_SERVICES, K.TELL_PEER_FAILED)),  # §6 row 22 / row 13
    ),
    (S.RUNNING_IN_BACKUP_MODE, CriticalServiceDelayElapsed): (  # §6 row 23 / row 15
        T(S.FAILOVER_AFFECTED_SERVICES, R.AUTO_RECOVER_CRITICAL_SERVICE_DOWN,  # §6 row 23 / row 15
          (K.STOP_SERVICES, K.ASK_PEER_TO_RECOVER), guard=peer_failed_over_healthy),
        T(S.RUNNING_IN_FAILED_MODE, R.CRITICAL_SERVICES_DOWN,  # §6 row 23 / row 15
          (K.STOP_SERVICES, K.TELL_PEER_FAILED)),
    ),
    (S.BACKUP_ACTIVATED, PeerRequestedTakeBack): (  # §6 rows 22-23 way back
        T(S.FALLING_BACK, FROM_EVENT, (K.DEMOTE_PEER_USERS, K.CONFIRM_RELEASE)),  # §6 rows 22-23 way back
    ),
    (S.BACKUP_ACTIVATED, PeerRequestedTakeover): (  # §6 rows 22-23: repeated request
        T(None, SAME, (K.CONFIRM_TAKEOVER,)),  # §6 rows 22-23: repeated request
    ),
    (S.BACKUP_ACTIVATED, DbUnavailable): (  # §6 row 13 (backup lost its database)
        T(S.RUNNING_IN_FAILED_MODE, R.DATABASE_FAILURE,  # §6 row 13 (backup lost its database)
          (K.STOP_SERVICES, K.TELL_PEER_FAILED)),
    ),
    (S.BACKUP_ACTIVATED, CriticalServiceDelayElapsed): (  # §6 row 15
        T(S.RUNNING_IN_FAILED_MODE, R.CRITICAL_SERVICES_DOWN, (K.STOP_SERVICES, K.TELL_PEER_FAILED)),  # §6 row 15
    ),
    (S.FALLING_BACK, PeerTookBack): _TOOK_BACK,  # §6 rows 4, 9, 10 -> 1
    (S.FALLING_BACK, PeerRequestedTakeBack): (  # §6 row 9: repeated request
        T(None, SAME, (K.DEMOTE_PEER_USERS, K.CONFIRM_RELEASE)),  # §6 row 9: repeated request
    ),
    (S.FALLING_BACK, HeartbeatTimedOut): _FAIL_UNKNOWN,  # §6 row 21
    (S.FALLING_BACK, PeerConnectionRefused): _FAIL_UNKNOWN,  # §6 row 21
    (S.FALLING_BACK, PeerRebooted): _FAIL_UNKNOWN,  # §6 row 21
    (S.TAKING_BACK, CriticalServicesRestored): (  # §6 rows 4, 9, 10
        T(None, SAME, (K.CANCEL_SERVICE_DELAY, K.ASK_PEER_TO_RELEASE)),  # §6 rows 4, 9, 10
    ),
    (S.TAKING_BACK, CriticalServiceStartFailed): (  # §6 row 14
        T(S.RUNNING_IN_FAILED_MODE, R.CRITICAL_SERVICE_START_FAILED,  # §6 row 14
          (K.STOP_SERVICES, K.TELL_PEER_FAILED)),
    ),
    (S.TAKING_BACK, PeerReleasedUsers): (  # §6 rows 4, 9, 10
        T(None, SAME, (K.TAKE_BACK_OWN_USERS,), guard=no_move_in_flight),  # §6 rows 4, 9, 10
        T(None, SAME),  # §6 rows 4, 9, 10
    ),
    (S.TAKING_BACK, UsersMoved): (T(S.NORMAL, R.NORMAL, (K.ACTIVATE_OWN_SESSIONS, K.CONFIRM_TAKE_BACK)),),  # §6 row 1
    (S.TAKING_BACK, MoveUsersFailed): (  # §6 row 20
        T(S.RUNNING_IN_FAILED_MODE, R.TAKE_BACK_USERS_FAILED, (K.STOP_SERVICES, K.TELL_PEER_FAILED)),  # §6 row 20
    ),
    (S.TAKING_BACK, HeartbeatTimedOut): _FAIL_UNKNOWN,  # §6 row 21
    (S.TAKING_BACK, PeerConnectionRefused): _FAIL_UNKNOWN,  # §6 row 21
    (S.TAKING_BACK, PeerRebooted): _FAIL_UNKNOWN,  # §6 row 21
    (S.FAILED_OVER, AdminRequestedFallback): (  # §6 rows 11, 16-18 -> 4
        T(S.TAKING_BACK, R.ON_ADMIN_REQUEST, (K.CANCEL_AUTO_FALLBACK, K.START_SERVICES)),  # §6 rows 11, 16-18 -> 4
    ),
    (S.FAILED_OVER, AutoFallbackDelayElapsed): (  # §6 row 10
        T(S.TAKING_BACK, R.AUTOMATIC_FALLBACK, (K.START_SERVICES,)),  # §6 row 10
    ),
    (S.FAILED_OVER, PeerRequestedAutoRecovery): (  # §6 rows 22-23
        T(S.TAKING_OVER, FROM_EVENT, (K.CANCEL_AUTO_FALLBACK, K.TAKE_PEER_USERS)),  # §6 rows 22-23
    ),
    (S.FAILED_OVER, CriticalServiceDown): (  # §6 row 12
        T(S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, R.CRITICAL_SERVICES_DOWN,  # §6 row 12
          (K.CANCEL_AUTO_FALLBACK,)),
    ),
    (S.FAILED_OVER, CriticalServiceStartFailed): (  # §6 row 12
        T(S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, R.CRITICAL_SERVICES_DOWN,  # §6 row 12
          (K.CANCEL_AUTO_FALLBACK,)),
    ),
    (S.FAILED_OVER, DbUnavailable): (  # §6 row 13
        T(S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, R.DATABASE_FAILURE,  # §6 row 13
          (K.CANCEL_AUTO_FALLBACK, K.STOP_SERVICES)),
    ),
    (S.FAILED_OVER, HeartbeatTimedOut): (T(None, SAME, (K.PROBE_PEER,)),),  # §6 row 16 / §9: check the database first
    (S.FAILED_OVER, PeerDeadInDatabase): (  # §6 row 16 (backup died)
        T(S.TAKING_OVER, R.PEER_DOWN, (K.CANCEL_AUTO_FALLBACK, K.TAKE_PEER_USERS)),  # §6 row 16 (backup died)
    ),
    (S.FAILED_OVER, PeerConnectionRefused): (  # §6 row 16 (backup died)
        T(S.TAKING_OVER, R.PEER_DOWN, (K.CANCEL_AUTO_FALLBACK, K.TAKE_PEER_USERS)),  # §6 row 16 (backup died)
    ),
    (S.FAILED_OVER, PeerRebooted): (  # §6 row 17 (backup rebooted)
        T(S.TAKING_OVER, R.PEER_REBOOT, (K.CANCEL_AUTO_FALLBACK, K.TAKE_PEER_USERS)),  # §6 row 17 (backup rebooted)
    ),
    (S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, CriticalServicesRestored): (  # §6 row 12 -> 11
        T(S.FAILED_OVER, SAME, (K.CANCEL_SERVICE_DELAY, K.ARM_AUTO_FALLBACK)),  # §6 row 12 -> 11
    ),
    (S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING, DbRestored): (  # §6 row 13 way back
        T(None, SAME, (K.START_SERVICES,)),  # §6 row 13 way back
    ),
    (S.FAILOVER_AFFECTED_SERVICES, CriticalServicesRestored): (  # §6 rows 22-23 way back
        T(S.FAILED_OVER, SAME, (K.CANCEL_SERVICE_DELAY, K.ARM_AUTO_FALLBACK)),  # §6 rows 22-23 way back
    ),
    (S.FAILOVER_AFFECTED_SERVICES, DbRestored): (T(None, SAME, (K.START_SERVICES,)),),  # §6 row 22 way back
    (S.RUNNING_IN_FAILED_MODE, PeerEnteredFailedMode): IGNORE,  # §6 rows 14-21: no echo
    (S.RUNNING_IN_FAILED_MODE, InternalErrorOccurred): IGNORE,  # §6 row 21: keep the first reason
    (S.RUNNING_IN_FAILED_MODE, UsersMoved): IGNORE,  # §6 rows 19-21: a late result; Recovery reconciles
    (S.RUNNING_IN_FAILED_MODE, MoveUsersFailed): IGNORE,  # §6 rows 19-21: a late result
    (S.FAILOVER_AFFECTED_SERVICES, MoveUsersFailed): IGNORE,  # §6 rows 22-23: a late result
}

ANY_STATE: dict[type[Event], tuple[Transition, ...]] = {
    SrmStarted: _RESTART,  # §6 rows 5-9: a restarted SRM starts over from Initializing
    AdminRequestedRecovery: _RESTART,  # §7 Recovery restarts the SRM
    HeartbeatDue: (T(None, SAME, (K.SEND_HEARTBEAT, K.ARM_HEARTBEAT)),),  # §5 Keep Alive Interval
    HeartbeatTimedOut: IGNORE,  # §5 only Normal / Failed Over / transient states react
    InitHeartbeatTimedOut: IGNORE,  # §5 only Initializing reacts
    PeerDeadInDatabase: IGNORE,  # §6 row 16 only Normal / Failed Over / Initializing take over
    PeerConnectionRefused: IGNORE,  # §6 row 16
    PeerRebooted: IGNORE,  # §6 row 17
    PeerRequestedTakeover: IGNORE,  # §6 row 2 only Normal / Initializing take over
    PeerRequestedTakeBack: (  # §6 row 9: release whatever we hold of the peer
        T(None, SAME, (K.DISCONNECT_PEER_USERS, K.CONFIRM_RELEASE)),  # §6 row 9: release whatever we hold of the peer
    ),
    PeerReleasedUsers: IGNORE,  # §6 row 4: late or duplicate reply
    PeerTookOver: IGNORE,  # §6 row 3: late or duplicate reply
    PeerTookBack: IGNORE,  # §6 row 4: late or duplicate reply
    PeerRequestedAutoRecovery: IGNORE,  # §6 rows 22-23 only a healthy Failed Over node recovers
    PeerEnteredFailedMode: (  # §6 rows 14-21 "same on node 2"
        T(S.RUNNING_IN_FAILED_MODE, FROM_EVENT, (K.STOP_SERVICES,)),  # §6 rows 14-21 "same on node 2"
    ),
    InternalErrorOccurred: _FAIL_UNKNOWN,  # §6 row 21
    NodeShuttingDown: (T(None, SAME, (K.STOP_SERVICES, K.TELL_PEER_REBOOTING)),),  # §6 row 17
    AdminRequestedFailover: _REFUSE,  # §7 only from Normal
    AdminRequestedFallback: _REFUSE,  # §7 only from Idle / Failed Over
    CriticalServiceDown: (T(None, SAME, (K.ARM_SERVICE_DELAY,)),),  # §4 Critical Service Delay
    CriticalServiceStartFailed: (T(None, SAME, (K.ARM_SERVICE_DELAY,)),),  # §4 Critical Service Delay
    CriticalServicesRestored: (T(None, SAME, (K.CANCEL_SERVICE_DELAY,)),),  # §4
    CriticalServiceDelayElapsed: IGNORE,  # §4 only Normal / backup states fail over
    AutoFallbackDelayElapsed: IGNORE,  # §5 only Failed Over falls back
    DbUnavailable: (T(None, SAME, (K.STOP_SERVICES,)),),  # §9 no database lease, no serving
    DbRestored: IGNORE,  # §6 row 13
}

# States that take every event from the defaults, deliberately (see the module rules).
DEFAULTS_ONLY: frozenset[NodeState] = frozenset({
    S.UNKNOWN,  # §6 row 24: HA not enabled properly; nothing moves until an SRM restart (§7)
})

JOINT_OVERRIDES: tuple[Transition, ...] = (
    T(S.UNKNOWN, R.UNKNOWN, (K.CANCEL_INIT_TIMEOUT, K.CANCEL_AUTO_FALLBACK), guard=ha_mismatch),  # §6 row 24
)

JOINT: dict[tuple[NodeState, NodeState], tuple[Transition, ...]] = {
    (S.INITIALIZING, S.NORMAL): (  # §6 row 9: reclaim own users
        T(S.TAKING_BACK, R.INITIALIZATION, (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES)),  # §6 row 9: reclaim own users
    ),
    (S.INITIALIZING, S.INITIALIZING): (  # §7 Recovery: leader first
        T(S.TAKING_BACK, R.INITIALIZATION, (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES),  # §7 Recovery: leader first
          guard=is_leader),
    ),
    (S.INITIALIZING, S.RUNNING_IN_BACKUP_MODE): (  # §6 rows 11, 16-18
        T(S.FAILED_OVER, R.INITIALIZATION,  # §6 rows 11, 16-18
          (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.ARM_AUTO_FALLBACK)),
    ),
    (S.INITIALIZING, S.BACKUP_ACTIVATED): (  # §6 rows 22-23
        T(S.FAILED_OVER, R.INITIALIZATION,  # §6 rows 22-23
          (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.ARM_AUTO_FALLBACK)),
    ),
    (S.INITIALIZING, S.TAKING_OVER): (  # §6 row 8 (mirror)
        T(S.FAILING_OVER, R.INITIALIZATION, (K.CANCEL_INIT_TIMEOUT, K.STOP_SERVICES)),  # §6 row 8 (mirror)
    ),
    (S.INITIALIZING, S.FAILING_OVER): (  # §6 row 8
        T(S.TAKING_OVER, R.INITIALIZATION, (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.TAKE_PEER_USERS)),  # §6 row 8
    ),
    (S.INITIALIZING, S.FALLING_BACK): (  # §6 row 9
        T(S.TAKING_BACK, R.INITIALIZATION, (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES)),  # §6 row 9
    ),
    (S.INITIALIZING, S.IDLE): (  # §6 rows 6-7
        T(S.TAKING_OVER, R.INITIALIZATION, (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.TAKE_PEER_USERS)),  # §6 rows 6-7
    ),
    (S.INITIALIZING, S.FAILED_OVER): (  # §6 rows 6-7, 11
        T(S.TAKING_OVER, R.INITIALIZATION,  # §6 rows 6-7, 11
          (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.TAKE_PEER_USERS)),
    ),
    (S.INITIALIZING, S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING): (  # §6 rows 12-13
        T(S.TAKING_OVER, R.INITIALIZATION,  # §6 rows 12-13
          (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.TAKE_PEER_USERS)),
    ),
    (S.INITIALIZING, S.FAILOVER_AFFECTED_SERVICES): (  # §6 rows 22-23
        T(S.TAKING_OVER, R.INITIALIZATION,  # §6 rows 22-23
          (K.CANCEL_INIT_TIMEOUT, K.START_SERVICES, K.TAKE_PEER_USERS)),
    ),
    (S.NORMAL, S.FAILING_OVER): (  # §6 row 2: the request was lost
        T(S.TAKING_OVER, FROM_PEER, (K.TAKE_PEER_USERS,), guard=ha_active),  # §6 row 2: the request was lost
    ),
    (S.NORMAL, S.RUNNING_IN_BACKUP_MODE): _FAIL_UNKNOWN,  # §6 row 16: link healed, both claim my users
    (S.NORMAL, S.BACKUP_ACTIVATED): _FAIL_UNKNOWN,  # §6 row 16: link healed, both claim my users
    (S.RUNNING_IN_BACKUP_MODE, S.NORMAL): _FAIL_UNKNOWN,  # §6 row 16: link healed, both claim the peer's users
    (S.RUNNING_IN_BACKUP_MODE, S.RUNNING_IN_BACKUP_MODE): _FAIL_UNKNOWN,  # §6 row 21
    (S.RUNNING_IN_BACKUP_MODE, S.BACKUP_ACTIVATED): _FAIL_UNKNOWN,  # §6 row 21
    (S.BACKUP_ACTIVATED, S.NORMAL): _FAIL_UNKNOWN,  # §6 row 21
    (S.BACKUP_ACTIVATED, S.RUNNING_IN_BACKUP_MODE): _FAIL_UNKNOWN,  # §6 row 21
    (S.BACKUP_ACTIVATED, S.BACKUP_ACTIVATED): _FAIL_UNKNOWN,  # §6 row 21
    (S.FAILING_OVER, S.RUNNING_IN_BACKUP_MODE): _TAKEN_OVER,  # §6 row 3: the confirmation was lost
    (S.FALLING_BACK, S.NORMAL): _TOOK_BACK,  # §6 row 4 -> 1: the confirmation was lost
}

JOINT_DEFAULTS: tuple[Transition, ...] = (
    T(S.RUNNING_IN_FAILED_MODE, FROM_PEER, (K.STOP_SERVICES,),  # §6 rows 14-21 "same on node 2"
      guard=peer_failed_while_running),
    T(None, SAME, (K.SEND_HEARTBEAT,), guard=peer_is_initializing),  # §5 answer a starting peer at once
)

SERVES: dict[NodeState, Serves] = {
    S.INITIALIZING: Serves.NONE,  # §6: transient; waits for the peer
    S.IDLE: Serves.NONE,  # §6: services stopped
    S.NORMAL: Serves.OWN,  # §6 row 1
    S.RUNNING_IN_BACKUP_MODE: Serves.ALL,  # §6 row 3
    S.TAKING_OVER: Serves.NONE,  # §9: no new logins until the move commits
    S.FAILING_OVER: Serves.NONE,  # §7: services stopped
    S.FAILED_OVER: Serves.NONE,  # §6: its users are on the peer
    S.FAILED_OVER_WITH_CRITICAL_SERVICES_NOT_RUNNING: Serves.NONE,  # §6 rows 12-13
    S.FALLING_BACK: Serves.OWN,  # §7: peer users disconnected
    S.TAKING_BACK: Serves.NONE,  # §9: no new logins until the move commits
    S.RUNNING_IN_FAILED_MODE: Serves.NONE,  # §6 rows 14-21: until Recovery
    S.UNKNOWN: Serves.OWN,  # §6 row 24: nothing moves
    S.BACKUP_ACTIVATED: Serves.ALL,  # §6 rows 22-23
    S.FAILOVER_AFFECTED_SERVICES: Serves.NONE,  # §6 rows 22-23
}


def rows_for(state: NodeState, peer_state: NodeState | None, event: Event) -> tuple[Transition, ...]:
    """The candidate rows for `event` in `state`, in the order they are tried."""
    if isinstance(event, PeerReport):
        pair = JOINT.get((state, peer_state), ()) if peer_state is not None else ()
        return JOINT_OVERRIDES + pair + JOINT_DEFAULTS
    return TRANSITIONS.get((state, type(event))) or ANY_STATE.get(type(event), ())


# --- documentation --------------------------------------------------------------------


def _cell(row: Transition) -> list[str]:
    to = row.to.value if row.to is not None else "(same)"
    reason = row.reason.value if isinstance(row.reason, Reason) else f"({row.reason.value})"
    guard = row.guard.__name__ if row.guard is not None else ""
    steps = ", ".join(step.name.lower() for step in row.steps)
    return [guard, to, reason, steps]


def render_markdown() -> str:
    """The three tables as Markdown, for the docs."""
    head = "| state | event | guard | to | reason | steps |\n|---|---|---|---|---|---|"
    lines = ["## Transitions", "", head]
    for (state, event), rows in TRANSITIONS.items():
        lines += [f"| {state.value} | {event.__name__} | " + " | ".join(_cell(r)) + " |" for r in rows]
    for event, rows in ANY_STATE.items():
        lines += [f"| (any) | {event.__name__} | " + " | ".join(_cell(r)) + " |" for r in rows]
    lines += ["", "## Peer reports (my state, peer state)", "", head.replace("| event |", "| peer |")]
    for row in JOINT_OVERRIDES:
        lines.append("| (any) | (any) | " + " | ".join(_cell(row)) + " |")
    for (state, peer), rows in JOINT.items():
        lines += [f"| {state.value} | {peer.value} | " + " | ".join(_cell(r)) + " |" for r in rows]
    for row in JOINT_DEFAULTS:
        lines.append("| (any) | (any) | " + " | ".join(_cell(row)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """`python -m presence_ha.server.srm.table --markdown`."""
    if argv != ["--markdown"]:
        print("usage: python -m presence_ha.server.srm.table --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
