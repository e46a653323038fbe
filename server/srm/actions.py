"""SRM actions: commands returned by `SrmMachine.handle()` for the runner to execute.

Rules of this module:
- Every action is a frozen dataclass named as a command. Actions carry plain values.
- The runner executes a returned list strictly in order. The machine puts database
  writes (`PersistState`, `MoveUsers`) before messages to the peer or to clients
  (etcd raft: persist, then send), and `StopCriticalServices` before the message
  that lets the peer take the users (SPEC §9: two nodes never serve one user).
- `MoveUsers` is one database transaction that compares and sets the group epoch:
  it commits only if the stored group epoch is `epoch - 1`, then sets it to `epoch`
  and moves every user whose active node is `src` (and, if `assigned_node` is set,
  whose assigned node is `assigned_node`) to `dst`. The runner reports
  `UsersMoved(epoch)` or `MoveUsersFailed(epoch)`.
- `StartTimer` with a running name restarts that timer; `CancelTimer` of a timer that
  is not running is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from presence_ha.server.srm.events import Event, PeerMessage, Timer
    from presence_ha.server.srm.table import NodeState, Reason


class ClientKind(Enum):
    """Which client sessions of this node an action concerns."""

    OWN_USERS = "own users"  # users assigned to this node
    PEER_USERS = "peer users"  # users assigned to the peer


@dataclass(frozen=True)
class Action:
    """Base class of every SRM action."""


@dataclass(frozen=True)
class PersistState(Action):
    """Write this node's (state, reason, epoch) to the database `srm_state` row."""

    state: NodeState
    reason: Reason
    epoch: int


@dataclass(frozen=True)
class StopCriticalServices(Action):
    """Stop the node's critical services; every client session here is closed."""


@dataclass(frozen=True)
class StartCriticalServices(Action):
    """Start the critical services (idempotent); report Restored or StartFailed."""


@dataclass(frozen=True)
class MoveUsers(Action):
    """Fenced user move: see the module docstring for the compare-and-set."""

    src: str
    dst: str
    epoch: int
    assigned_node: str | None = None


@dataclass(frozen=True)
class StartTimer(Action):
    """(Re)start timer `name`; fire `TimerFired(name)` after `seconds`."""

    name: Timer
    seconds: float


@dataclass(frozen=True)
class CancelTimer(Action):
    """Cancel timer `name` if it runs."""

    name: Timer


@dataclass(frozen=True)
class NotifyPeer(Action):
    """Send `msg` to the peer's SRM, which feeds it to its machine as an event."""

    msg: PeerMessage


@dataclass(frozen=True)
class DisconnectClients(Action):
    """Close the client sessions of `kind` on this node; they log in elsewhere."""

    kind: ClientKind


@dataclass(frozen=True)
class DemoteClients(Action):
    """Turn the ACTIVE sessions of `kind` here INACTIVE, connections kept open: no
    traffic reaches them (it waits in offline storage for the peer) and their end
    announces no unavailable. Make before break (issue #18): a node letting its users
    go demotes them before the peer takes them, and closes them (`DisconnectClients`,
    `StopCriticalServices`: redirected to the peer) only once the peer serves them."""

    kind: ClientKind


@dataclass(frozen=True)
class ActivateInactiveSessions(Action):
    """Route traffic to the inactive (backup) sessions of `owner`'s users here."""

    owner: str


@dataclass(frozen=True)
class CheckPeerLiveness(Action):
    """Read the peer's database liveness; report PeerAlive/PeerDeadInDatabase."""

    peer: str


@dataclass(frozen=True)
class RefuseAdminRequest(Action):
    """Answer the admin that `request` is not allowed in `state`."""

    request: Event
    state: NodeState
