"""Login admission by the SRM state (SPEC §6): may this user log in on this node now?

Rules of this module:
- Pure: `decide` is fed the SRM's view (state and the nodes whose users it serves),
  the user's assigned node (or `UNREAD` if the caller did not read it), and the waits
  already done; it returns one typed decision. The runner carries it out: it admits,
  refuses, reads the assignment, or waits until `settled(...)` holds (or a deadline
  passes) and asks again.
- A login that races the SRM waits briefly instead of failing: a fresh node is
  Initializing for milliseconds (`Settle.INITIALIZED`), and users moving here arrive
  within a takeover or take-back (`Settle.MOVE_DONE`). Each wait happens at most once
  per login; after it, the decision is made with whatever the state is then.
- A node that serves nobody refuses (`Refusal.NOT_SERVING`); a user assigned to a node
  this node does not serve is moving between the nodes (`Refusal.USER_MOVING`). Both
  are temporary: the client retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from presence_ha.server.srm.table import NodeState

SETTLE_S = 2.0  # how long a login waits for an Initializing SRM to decide, or for a move
MOVING_IN = frozenset({NodeState.TAKING_OVER, NodeState.TAKING_BACK})  # users on their way here


class Unread(Enum):
    """The caller did not read the user's assigned node during this login."""

    UNREAD = "unread"


UNREAD = Unread.UNREAD


@dataclass(frozen=True)
class SrmView:
    """What admission reads of the SRM: its state and whose users it serves."""

    state: NodeState
    serving: frozenset[str]


class Settle(Enum):
    """What a login may wait for."""

    INITIALIZED = "the SRM left Initializing"
    MOVE_DONE = "the users moving here arrived"


class Refusal(Enum):
    NOT_SERVING = "node serves no users now"
    USER_MOVING = "user is moving between nodes"


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Refuse:
    reason: Refusal


@dataclass(frozen=True)
class ReadAssignment:
    """Read the user's assigned node, then decide again."""


@dataclass(frozen=True)
class Wait:
    until: Settle


Decision = Admit | Refuse | ReadAssignment | Wait


def settled(until: Settle, view: SrmView | None) -> bool:
    """Whether a login waiting `until` may go on with `view` (None: no SRM yet)."""
    if view is None:
        return False
    if until is Settle.INITIALIZED:
        return view.state is not NodeState.INITIALIZING
    return view.state not in MOVING_IN


def decide(view: SrmView | None, assigned: str | Unread | None, waited: frozenset[Settle]) -> Decision:
    """The next step of one login's admission (see the module rules)."""
    if Settle.INITIALIZED not in waited and not settled(Settle.INITIALIZED, view):
        return Wait(Settle.INITIALIZED)
    serving = view.serving if view is not None else frozenset()
    if Settle.MOVE_DONE not in waited:
        if not serving:
            return Refuse(Refusal.NOT_SERVING)
        if assigned is UNREAD:
            return ReadAssignment()
        assert view is not None
        if assigned is not None and assigned not in serving and view.state in MOVING_IN:
            return Wait(Settle.MOVE_DONE)
    if assigned is not None and assigned is not UNREAD and assigned not in serving:
        return Refuse(Refusal.USER_MOVING)
    return Admit()
