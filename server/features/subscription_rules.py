"""The presence subscription state machine of RFC 6121 Appendix A, as data.

Rules of this module:
- Pure: no I/O, no asyncio, no database. `decide(way, kind, state, approved)` returns a
  `Decision` (new state, new pre-approval flag, effects); the subscription feature
  executes the effects, database write first, then stanzas.
- `TABLE` holds every row of Appendix A tables A.2.1-A.2.4 (outbound: the user sends
  the stanza to the contact) and A.3.1-A.3.4 (inbound: the stanza arrives for the
  user from the contact), one line each: `route` is the MUST / MUST NOT column, `to`
  the new state (the same state means "no state change").
- States are described from the point of view of the roster owner ("user").
- Everything beyond the tables is a named guard in `decide`: pre-approval (§3.4),
  auto-reply to a request already granted (§3.1.3), storing or dropping the pending
  inbound request, presence to send when "from" is gained or lost (§3.1.5, §3.2.2,
  §3.3.3), and the roster push when the visible item changes (§3.1.2 ff.).
- `python -m presence_ha.server.features.subscription_rules` prints the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from presence_ha.server.xmpp.stanzas import Subscription

Sub = Subscription  # the subscription states (none/to/from/both), short for the table


class Kind(enum.Enum):
    """Subscription-related presence types (RFC 6121 §3): the `PresenceType`s this table
    covers, with their values (`Kind(t.value)` for such a `PresenceType` t)."""

    SUBSCRIBE = "subscribe"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBE = "unsubscribe"
    UNSUBSCRIBED = "unsubscribed"


class Way(enum.Enum):
    OUTBOUND = "outbound"  # Appendix A.2: sent by the user
    INBOUND = "inbound"  # Appendix A.3: received by the user


@dataclass(frozen=True)
class State:
    sub: Sub = Sub.NONE
    pending_out: bool = False
    pending_in: bool = False

    def __str__(self) -> str:
        pending = [w for w, on in (("Out", self.pending_out), ("In", self.pending_in)) if on]
        name = self.sub.value.capitalize()
        return f"{name} + Pending {'/'.join(pending)}" if pending else name


# The nine states of Appendix A.1.
NONE = State()
NONE_OUT = State(pending_out=True)
NONE_IN = State(pending_in=True)
NONE_OUT_IN = State(pending_out=True, pending_in=True)
TO = State(Sub.TO)
TO_IN = State(Sub.TO, pending_in=True)
FROM = State(Sub.FROM)
FROM_OUT = State(Sub.FROM, pending_out=True)
BOTH = State(Sub.BOTH)
STATES = (NONE, NONE_OUT, NONE_IN, NONE_OUT_IN, TO, TO_IN, FROM, FROM_OUT, BOTH)


class Effect(enum.Enum):
    ROUTE = "route the stanza (outbound) or deliver it to the user (inbound)"
    PUSH = "push the changed roster item to interested resources"
    STORE_REQUEST = "keep the inbound request until answered (§3.1.3)"
    DROP_REQUEST = "forget the stored inbound request"
    AUTO_SUBSCRIBED = "answer 'subscribed' on the user's behalf (§3.1.3, §3.4)"
    SEND_PRESENCE = "send the user's current presence to the contact (§3.1.5)"
    SEND_UNAVAILABLE = "send unavailable presence from the user to the contact (§3.2.2, §3.3.3)"


@dataclass(frozen=True)
class Row:
    route: bool
    to: State


@dataclass(frozen=True)
class Decision:
    state: State
    approved: bool
    effects: frozenset[Effect]


O, I = Way.OUTBOUND, Way.INBOUND  # noqa: E741 (the table's columns, as in Appendix A)
S, SD, U, UD = Kind.SUBSCRIBE, Kind.SUBSCRIBED, Kind.UNSUBSCRIBE, Kind.UNSUBSCRIBED

TABLE: dict[tuple[Way, Kind, State], Row] = {
    (O, S, NONE): Row(True, NONE_OUT),  # A.2.1 Table 2
    (O, S, NONE_OUT): Row(True, NONE_OUT),  # A.2.1
    (O, S, NONE_IN): Row(True, NONE_OUT_IN),  # A.2.1
    (O, S, NONE_OUT_IN): Row(True, NONE_OUT_IN),  # A.2.1
    (O, S, TO): Row(True, TO),  # A.2.1
    (O, S, TO_IN): Row(True, TO_IN),  # A.2.1
    (O, S, FROM): Row(True, FROM_OUT),  # A.2.1
    (O, S, FROM_OUT): Row(True, FROM_OUT),  # A.2.1
    (O, S, BOTH): Row(True, BOTH),  # A.2.1
    (O, U, NONE): Row(True, NONE),  # A.2.2 Table 3
    (O, U, NONE_OUT): Row(True, NONE),  # A.2.2
    (O, U, NONE_IN): Row(True, NONE_IN),  # A.2.2
    (O, U, NONE_OUT_IN): Row(True, NONE_IN),  # A.2.2
    (O, U, TO): Row(True, NONE),  # A.2.2
    (O, U, TO_IN): Row(True, NONE_IN),  # A.2.2
    (O, U, FROM): Row(True, FROM),  # A.2.2
    (O, U, FROM_OUT): Row(True, FROM),  # A.2.2
    (O, U, BOTH): Row(True, FROM),  # A.2.2
    (O, SD, NONE): Row(False, NONE),  # A.2.3 Table 4 (pre-approval: guard)
    (O, SD, NONE_OUT): Row(False, NONE_OUT),  # A.2.3
    (O, SD, NONE_IN): Row(True, FROM),  # A.2.3
    (O, SD, NONE_OUT_IN): Row(True, FROM_OUT),  # A.2.3
    (O, SD, TO): Row(False, TO),  # A.2.3
    (O, SD, TO_IN): Row(True, BOTH),  # A.2.3
    (O, SD, FROM): Row(False, FROM),  # A.2.3
    (O, SD, FROM_OUT): Row(False, FROM_OUT),  # A.2.3
    (O, SD, BOTH): Row(False, BOTH),  # A.2.3
    (O, UD, NONE): Row(False, NONE),  # A.2.4 Table 5
    (O, UD, NONE_OUT): Row(False, NONE_OUT),  # A.2.4
    (O, UD, NONE_IN): Row(True, NONE),  # A.2.4
    (O, UD, NONE_OUT_IN): Row(True, NONE_OUT),  # A.2.4
    (O, UD, TO): Row(False, TO),  # A.2.4
    (O, UD, TO_IN): Row(True, TO),  # A.2.4
    (O, UD, FROM): Row(True, NONE),  # A.2.4
    (O, UD, FROM_OUT): Row(True, NONE_OUT),  # A.2.4
    (O, UD, BOTH): Row(True, TO),  # A.2.4
    (I, S, NONE): Row(True, NONE_IN),  # A.3.1 Table 6
    (I, S, NONE_OUT): Row(True, NONE_OUT_IN),  # A.3.1
    (I, S, NONE_IN): Row(False, NONE_IN),  # A.3.1
    (I, S, NONE_OUT_IN): Row(False, NONE_OUT_IN),  # A.3.1
    (I, S, TO): Row(True, TO_IN),  # A.3.1
    (I, S, TO_IN): Row(False, TO_IN),  # A.3.1
    (I, S, FROM): Row(False, FROM),  # A.3.1 (auto-reply: guard)
    (I, S, FROM_OUT): Row(False, FROM_OUT),  # A.3.1 (auto-reply: guard)
    (I, S, BOTH): Row(False, BOTH),  # A.3.1 (auto-reply: guard)
    (I, U, NONE): Row(False, NONE),  # A.3.2 Table 7
    (I, U, NONE_OUT): Row(False, NONE_OUT),  # A.3.2
    (I, U, NONE_IN): Row(True, NONE),  # A.3.2
    (I, U, NONE_OUT_IN): Row(True, NONE_OUT),  # A.3.2
    (I, U, TO): Row(False, TO),  # A.3.2
    (I, U, TO_IN): Row(True, TO),  # A.3.2
    (I, U, FROM): Row(True, NONE),  # A.3.2
    (I, U, FROM_OUT): Row(True, NONE_OUT),  # A.3.2
    (I, U, BOTH): Row(True, TO),  # A.3.2
    (I, SD, NONE): Row(False, NONE),  # A.3.3 Table 8
    (I, SD, NONE_OUT): Row(True, TO),  # A.3.3
    (I, SD, NONE_IN): Row(False, NONE_IN),  # A.3.3
    (I, SD, NONE_OUT_IN): Row(True, TO_IN),  # A.3.3
    (I, SD, TO): Row(False, TO),  # A.3.3
    (I, SD, TO_IN): Row(False, TO_IN),  # A.3.3
    (I, SD, FROM): Row(False, FROM),  # A.3.3
    (I, SD, FROM_OUT): Row(True, BOTH),  # A.3.3
    (I, SD, BOTH): Row(False, BOTH),  # A.3.3
    (I, UD, NONE): Row(False, NONE),  # A.3.4 Table 9
    (I, UD, NONE_OUT): Row(True, NONE),  # A.3.4
    (I, UD, NONE_IN): Row(False, NONE_IN),  # A.3.4
    (I, UD, NONE_OUT_IN): Row(True, NONE_IN),  # A.3.4
    (I, UD, TO): Row(True, NONE),  # A.3.4
    (I, UD, TO_IN): Row(True, NONE_IN),  # A.3.4
    (I, UD, FROM): Row(False, FROM),  # A.3.4
    (I, UD, FROM_OUT): Row(True, FROM),  # A.3.4
    (I, UD, BOTH): Row(True, FROM),  # A.3.4
}


def with_from(state: State) -> State:
    """`state` plus a granted inbound subscription, its request answered."""
    return replace(state, sub=Sub.BOTH if state.sub.has_to else Sub.FROM, pending_in=False)


# -- guards (named, pure) ------------------------------------------------------
def preapproves(way: Way, kind: Kind, state: State, approved: bool) -> bool:
    """§3.4: 'subscribed' with no request to answer pre-approves a future one."""
    return way is O and kind is SD and not state.pending_in and not state.sub.has_from and not approved


def cancels_preapproval(way: Way, kind: Kind, state: State, approved: bool) -> bool:
    """§3.4: 'unsubscribed' with nothing to revoke cancels a pre-approval."""
    return way is O and kind is UD and approved and not state.pending_in and not state.sub.has_from


def auto_approves(way: Way, kind: Kind, state: State, approved: bool) -> bool:
    """§3.4: a request arriving while pre-approved is granted at once."""
    return way is I and kind is S and approved and not state.sub.has_from


def already_granted(way: Way, kind: Kind, state: State) -> bool:
    """§3.1.3: a request for a subscription that exists is answered 'subscribed'."""
    return way is I and kind is S and state.sub.has_from


def _visible(state: State, approved: bool) -> tuple[Sub, bool, bool]:
    """What a roster item shows: subscription, ask='subscribe', approved='true'."""
    return state.sub, state.pending_out, approved


def _state_effects(old: State, new: State) -> set[Effect]:
    effects: set[Effect] = set()
    if new.pending_in and not old.pending_in:
        effects.add(Effect.STORE_REQUEST)
    if old.pending_in and not new.pending_in:
        effects.add(Effect.DROP_REQUEST)
    if new.sub.has_from and not old.sub.has_from:
        effects.add(Effect.SEND_PRESENCE)
    if old.sub.has_from and not new.sub.has_from:
        effects.add(Effect.SEND_UNAVAILABLE)
    return effects


def decide(way: Way, kind: Kind, state: State, approved: bool = False) -> Decision:
    """The outcome of `kind` going `way` while the user's state is `state`."""
    row = TABLE[(way, kind, state)]
    new, new_approved = row.to, approved
    effects = {Effect.ROUTE} if row.route else set()
    if auto_approves(way, kind, state, approved):
        new, new_approved, effects = with_from(state), False, {Effect.AUTO_SUBSCRIBED}
    elif already_granted(way, kind, state):
        effects.add(Effect.AUTO_SUBSCRIBED)
    elif preapproves(way, kind, state, approved):
        new_approved = True
    elif cancels_preapproval(way, kind, state, approved):
        new_approved = False
    if new.sub.has_from:
        new_approved = False  # an approval is used up once 'from' is granted
    effects |= _state_effects(state, new)
    if _visible(state, approved) != _visible(new, new_approved):
        effects.add(Effect.PUSH)
    return Decision(new, new_approved, frozenset(effects))


def markdown() -> str:
    lines = ["| way | stanza | state | route | new state |", "|---|---|---|---|---|"]
    for (way, kind, state), row in TABLE.items():
        to = "no state change" if row.to == state else f'"{row.to}"'
        lines.append(f'| {way.value} | {kind.value} | "{state}" | {"MUST" if row.route else "MUST NOT"} | {to} |')
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
