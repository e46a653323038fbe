"""Who gets a message for an account of our domain (RFC 6121 §8.5): the one rule.

Rules of this module:
- `route_message` is the only place that decides which local sessions receive a
  message, and what happens when none does. The message feature's inbound delivery
  and `deliver_now` (a message a peer node routed here) both execute its answer.
- Only ACTIVE sessions receive messages; an INACTIVE (backup) session never does
  (SPEC §8), not even when addressed by full JID.
- To a full JID (§8.5.3): that resource if it is an active session; otherwise chat and
  normal are handled as if sent to the bare JID, headline is dropped, groupchat gets
  service-unavailable.
- To a bare JID (§8.5.2.1): chat and normal go to the available resources of the
  highest non-negative priority, headline to every available resource of non-negative
  priority, groupchat gets service-unavailable.
- No such resource (§8.5.2.2): chat and normal go to offline storage (STORE; what is
  stored is the feature's rule), headline is dropped. An error message that no
  session takes is dropped: errors are never answered (RFC 6120 §8.3.1).
- An unknown `type` counts as normal (RFC 6121 §5.2.2); the caller maps it.
- `deliver_now` delivers at once, synchronously and with the stanza's bytes already
  made, the common case of a routed message: chat, normal or headline, to an account
  none of whose sessions wants carbons, that the rule hands to the addressed resource
  (full JID) or to the account's chosen resources (bare JID). Anything else
  (fallbacks, offline storage, errors, carbons) is left to the message feature. It
  makes no `MessageDelivered` announcement: carbons' `copy_received` is that event's
  only observer (tested), and it does nothing without carbons.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Protocol

from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import MessageType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext


class Outcome(enum.Enum):
    TO_RESOURCE = "hand it to the addressed resource"
    TO_ACCOUNT = "hand it to the account's chosen resources"
    DROP = "drop it without an answer"
    REFUSE = "answer service-unavailable: no groupchat service for user accounts"
    STORE = "keep it offline until the user is available (§8.5.2.2)"


# Made per message: a plain tuple (a dataclass instance costs more than the rule).
MessageRoute = tuple[Outcome, list[Session]]  # (outcome, the sessions to hand it to)


class SessionIndex(Protocol):
    """What the rule reads of the node's sessions (`server.sessions.SessionRegistry`)."""

    def get(self, full: JID) -> Session | None: ...

    def resources(self, bare: JID) -> list[Session]: ...


# Module constants: an enum member read through its class costs a lookup per use (3.11).
_ACTIVE = SessionKind.ACTIVE
_CHAT, _NORMAL, _HEADLINE = MessageType.CHAT, MessageType.NORMAL, MessageType.HEADLINE
_ERROR, _GROUPCHAT = MessageType.ERROR, MessageType.GROUPCHAT
_TO_RESOURCE, _TO_ACCOUNT = Outcome.TO_RESOURCE, Outcome.TO_ACCOUNT
_DROP: MessageRoute = (Outcome.DROP, [])
_REFUSE: MessageRoute = (Outcome.REFUSE, [])
_STORE: MessageRoute = (Outcome.STORE, [])


def route_message(
    sessions: SessionIndex, to: JID, kind: MessageType, resources: list[Session] | None = None
) -> MessageRoute:
    """Where a message of `kind` for `to` (an account of our domain) goes; `resources`:
    `sessions.resources(to.bare)` if the caller has it already."""
    if to.resource is not None:
        target = sessions.get(to)
        if target is not None and target.kind is _ACTIVE:
            return _TO_RESOURCE, [target]
        if kind is _HEADLINE:
            return _DROP
    if kind is _ERROR:
        return _DROP
    if kind is _GROUPCHAT:
        return _REFUSE
    if resources is None:
        resources = sessions.resources(to.bare)
    candidates = [s for s in resources if s.kind is _ACTIVE and s.available and s.priority >= 0]
    if candidates:
        return _TO_ACCOUNT, _chosen(candidates, kind)
    return _DROP if kind is _HEADLINE else _STORE


def _chosen(candidates: list[Session], kind: MessageType) -> list[Session]:
    """§8.5.2.1, of the available resources of non-negative priority: a headline goes
    to all of them, chat and normal to those of the highest priority."""
    if kind is _HEADLINE or len(candidates) < 2:
        return candidates
    top = max(s.priority for s in candidates)
    return [s for s in candidates if s.priority == top]


_NOW_TYPES = (_CHAT, _NORMAL, _HEADLINE)
_message_type = MessageType.of


def deliver_now(ctx: FeatureContext, stanza: ET.Element, to: JID, wire: bytes) -> bool:
    """Deliver the message `stanza` for `to` (of our domain), whose serialized form is
    `wire`, at once; False: nothing was done, deliver it through the router."""
    kind = _message_type(stanza)
    if kind is None or kind not in _NOW_TYPES:
        return False
    sessions = ctx.sessions
    resources = sessions.resources(to.bare)
    if not resources or any(s.carbons for s in resources):
        return False
    outcome, targets = route_message(sessions, to, kind, resources)
    if outcome is not (_TO_RESOURCE if to.resource is not None else _TO_ACCOUNT):
        return False
    for session in targets:
        session.send(stanza, wire)
    return True
