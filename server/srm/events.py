"""SRM events: facts fed to `SrmMachine.handle()`.

Rules of this module:
- Every event is a frozen dataclass named as a fact (past tense or noun). Events carry
  plain values only; the machine never receives sockets, sessions or clocks.
- Time reaches the core only as events: the runner fires the timers the machine asked
  for (`StartTimer(name, seconds)`) as `TimerFired(name)`; the machine turns that
  into the specific event of `TIMER_EVENTS` (`HeartbeatTimedOut`, ...).
- Effects report back as events: `UsersMoved` / `MoveUsersFailed` after `MoveUsers`,
  `CriticalServicesRestored` / `CriticalServiceStartFailed` after
  `StartCriticalServices`, `PeerAliveInDatabase` / `PeerDeadInDatabase` after
  `CheckPeerLiveness`.
- `PeerMessage` events travel between the nodes: the sender emits
  `NotifyPeer(msg)` and the receiving runner feeds `msg` to its own machine as is.
  They are written from the receiver's point of view ("the peer requested ...").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from presence_ha.server.srm.table import NodeState, Reason


class Timer(Enum):
    """The machine's timers; values are the names the runner may log."""

    HEARTBEAT = "heartbeat"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    INIT_HEARTBEAT_TIMEOUT = "init_heartbeat_timeout"
    CRITICAL_SERVICE_DELAY = "critical_service_delay"
    AUTO_FALLBACK = "auto_fallback"


@dataclass(frozen=True)
class Event:
    """Base class of every SRM event."""


# --- lifecycle --------------------------------------------------------------------


@dataclass(frozen=True)
class SrmStarted(Event):
    """The SRM process started; `epoch` is the group epoch read from the database."""

    epoch: int = 0


@dataclass(frozen=True)
class NodeShuttingDown(Event):
    """The node is shutting down or rebooting cleanly (SPEC §6 row 17)."""


@dataclass(frozen=True)
class InternalErrorOccurred(Event):
    """The runner hit an internal error (e.g. `InvalidTransition`): SPEC §6 row 21."""

    detail: str = ""


# --- timers -------------------------------------------------------------------------


@dataclass(frozen=True)
class TimerFired(Event):
    """A timer started by `StartTimer(name, ...)` expired."""

    name: Timer


@dataclass(frozen=True)
class HeartbeatDue(Event):
    """Time to send the next heartbeat (Keep Alive Interval)."""


@dataclass(frozen=True)
class HeartbeatTimedOut(Event):
    """No peer report for Keep Alive Timeout seconds."""


@dataclass(frozen=True)
class InitHeartbeatTimedOut(Event):
    """Initialization Keep Alive Timeout expired."""


@dataclass(frozen=True)
class CriticalServiceDelayElapsed(Event):
    """A critical service stayed down for Critical Service Delay seconds."""


@dataclass(frozen=True)
class AutoFallbackDelayElapsed(Event):
    """This failed-over node stayed healthy for the automatic fallback delay."""


# --- what the peer reports (heartbeat or database) ------------------------------------


@dataclass(frozen=True)
class PeerReport(Event):
    """The peer's state as it reported it; base of the two ways a report arrives."""

    peer_state: NodeState
    peer_reason: Reason
    peer_epoch: int
    peer_ha_enabled: bool = True


@dataclass(frozen=True)
class HeartbeatReceived(PeerReport):
    """A heartbeat from the peer over the SRM link. It also says whether the peer's
    database checks pass and how long ago its database last answered one (seconds);
    the runner fills these in when it sends and gives them to `liveness` when it
    receives. The machine ignores them."""

    peer_db_ok: bool = True
    peer_db_age_s: float = 0.0


@dataclass(frozen=True)
class PeerAliveInDatabase(PeerReport):
    """The peer still renews its database liveness: a link fault, never a takeover."""


@dataclass(frozen=True)
class PeerDeadInDatabase(Event):
    """The peer stopped renewing its database liveness."""


@dataclass(frozen=True)
class PeerConnectionRefused(Event):
    """The peer's SRM port refuses connections: its process is not running."""


@dataclass(frozen=True)
class PeerRebooted(Event):
    """The peer announced a clean shutdown or reboot."""


# --- peer protocol messages -----------------------------------------------------------


@dataclass(frozen=True)
class PeerRequestedTakeover(Event):
    """The peer stopped its services and asks this node to take its users."""

    reason: Reason


@dataclass(frozen=True)
class PeerTookOver(Event):
    """The peer now serves this node's users (move committed at `epoch`)."""

    epoch: int


@dataclass(frozen=True)
class PeerRequestedTakeBack(Event):
    """The peer wants its users back; this node must stop serving them."""

    reason: Reason


@dataclass(frozen=True)
class PeerReleasedUsers(Event):
    """The peer disconnected this node's users: they may be moved home."""


@dataclass(frozen=True)
class PeerTookBack(Event):
    """The peer moved its users home (move committed at `epoch`)."""

    epoch: int


@dataclass(frozen=True)
class PeerEnteredFailedMode(Event):
    """The peer is Running in Failed Mode for `reason` (SPEC §6 rows 14-21)."""

    reason: Reason


@dataclass(frozen=True)
class PeerRequestedAutoRecovery(Event):
    """The backup peer failed while this node is failed over but healthy (rows 22-23)."""

    reason: Reason


# --- admin ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminRequestedFailover(Event):
    """`utils ha failover NODE` for this node (SPEC §7)."""


@dataclass(frozen=True)
class AdminRequestedFallback(Event):
    """`utils ha fallback NODE` for this node: bring its users home (SPEC §7)."""


@dataclass(frozen=True)
class AdminRequestedRecovery(Event):
    """`utils ha recover GROUP`: restart this SRM (SPEC §7)."""


# --- local health -----------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalServiceDown(Event):
    """A critical service of this node stopped or failed (SPEC §4)."""

    service: str


@dataclass(frozen=True)
class CriticalServicesRestored(Event):
    """All critical services of this node are running again."""


@dataclass(frozen=True)
class CriticalServiceStartFailed(Event):
    """`StartCriticalServices` failed for `service`."""

    service: str = ""


@dataclass(frozen=True)
class DbUnavailable(Event):
    """This node cannot reach the database (Database Failure)."""


@dataclass(frozen=True)
class DbRestored(Event):
    """This node reaches the database again."""


# --- results of MoveUsers ---------------------------------------------------------------


@dataclass(frozen=True)
class UsersMoved(Event):
    """`MoveUsers(..., epoch)` committed; the group epoch is now `epoch`."""

    epoch: int


@dataclass(frozen=True)
class MoveUsersFailed(Event):
    """`MoveUsers(..., epoch)` lost its compare-and-set or hit a database error.

    `stored_epoch`: the group epoch the compare-and-set found (None: a database error,
    nothing read). `peer_reachable`: the SRM link to the peer was up when it failed."""

    epoch: int
    detail: str = ""
    stored_epoch: int | None = None
    peer_reachable: bool = True


PeerMessage = (
    HeartbeatReceived
    | PeerRequestedTakeover
    | PeerTookOver
    | PeerRequestedTakeBack
    | PeerReleasedUsers
    | PeerTookBack
    | PeerEnteredFailedMode
    | PeerRequestedAutoRecovery
    | PeerRebooted
)

TIMER_EVENTS: dict[Timer, type[Event]] = {
    Timer.HEARTBEAT: HeartbeatDue,
    Timer.HEARTBEAT_TIMEOUT: HeartbeatTimedOut,
    Timer.INIT_HEARTBEAT_TIMEOUT: InitHeartbeatTimedOut,
    Timer.CRITICAL_SERVICE_DELAY: CriticalServiceDelayElapsed,
    Timer.AUTO_FALLBACK: AutoFallbackDelayElapsed,
}


def observed_epoch(event: Event) -> int | None:
    """The group epoch an event proves to exist, if it carries one."""
    if isinstance(event, PeerReport):
        return event.peer_epoch
    if isinstance(event, (SrmStarted, UsersMoved, PeerTookOver, PeerTookBack)):
        return event.epoch
    if isinstance(event, MoveUsersFailed):
        return event.stored_epoch
    return None
