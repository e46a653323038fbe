"""XEP-0191 blocking: which stanzas a block list stops, and how (the one rule).

Rules of this module:
- A block-list item is a JID in text form; it matches as XEP-0191 §3.2 / XEP-0016
  §2.1 say: `user@domain/resource` only that resource, `user@domain` every resource
  of the account, `domain/resource` only that JID, `domain` the domain and every JID
  at it (`is_blocked`).
- Stanzas from a blocked entity to the user (`inbound`, §3.4 "blocked entity attempts
  to communicate"): presence of every type (probes and subscription requests too) is
  dropped without an answer; a message gets `service-unavailable`; an IQ get or set
  gets `service-unavailable`; everything else (results, errors) is dropped.
- Stanzas the user sends to a blocked entity (`outbound`, §3.3): `not-acceptable`
  with the `<blocked xmlns='urn:xmpp:blocking:errors'/>` condition, except errors and
  IQ results, which are dropped. Presence broadcasts are not "sent to" a contact:
  the presence feature leaves blocked contacts out of them (§3.3).

Where a block list comes from (`block_list`), with no query per stanza:
- Each ACTIVE session keeps its user's list for its whole life (`Session.blocked`),
  filled at the first stanza that needs it from the store, which reads it with the
  roster in one statement and caches it with the roster (`Store.blocked`). A change
  (the blocking feature) clears it on every active session of the user
  (`forget_block_list`), and the next stanza reads the new list.
- Why that is exact across nodes: all of a user's active sessions are on the node
  serving it (the cluster relays the others there), and changes come from them. A
  session that becomes active here (an activation, a takeover, a login after a move)
  starts with no list and reads the current one. A load that raced with a change is
  used for its own stanza only: sessions keep only what the store still holds as
  current afterwards.
- An account with no active session here (offline, or handled here while its node is
  unreachable) is checked with the store's cached copy (`ServerStore.blocked`: at most
  the roster cache's TTL old). Presence broadcasts (available, unavailable, error) for
  such an account reach nobody and pass without a list; subscription stanzas and
  probes are always checked.
- `BlockingGuard` applies the rule for the router: `*_now` answers without awaiting
  when the list is at hand (None: await the other method).
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Collection
from typing import TYPE_CHECKING

from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID, InvalidJid

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
_ACTIVE = SessionKind.ACTIVE
_BROADCAST_TYPES = (None, "unavailable", "error")  # presence that goes only to sessions


class Verdict(enum.Enum):
    PASS = "deliver it"
    DROP = "drop it without an answer"
    REFUSE = "answer service-unavailable"
    BLOCKED = "answer not-acceptable with <blocked/>"


def is_blocked(items: Collection[str], jid: JID) -> bool:
    """True if one of `items` matches `jid` (XEP-0016 §2.1 matching)."""
    if not items:
        return False
    if str(jid) in items or jid.domain in items:
        return True
    return jid.local is not None and jid.resource is not None and str(jid.bare) in items


def inbound(items: Collection[str], sender: JID | None, stanza: ET.Element) -> Verdict:
    """What to do with `stanza` from `sender` for a user whose block list is `items`."""
    if not items or sender is None or not is_blocked(items, sender):
        return Verdict.PASS
    kind, type_ = stanza.tag, stanza.get("type")
    if type_ == "error" or kind == "presence":
        return Verdict.DROP
    if kind == "message" or (kind == "iq" and type_ in ("get", "set")):
        return Verdict.REFUSE
    return Verdict.DROP


def outbound(items: Collection[str], to: JID, stanza: ET.Element) -> Verdict:
    """What to do with `stanza` a user whose block list is `items` sends to `to`."""
    if not items or not is_blocked(items, to):
        return Verdict.PASS
    type_ = stanza.get("type")
    if type_ == "error" or (stanza.tag == "iq" and type_ == "result"):
        return Verdict.DROP
    return Verdict.BLOCKED


def error_of(verdict: Verdict) -> StanzaError | None:
    """The error answering a stanza stopped by `verdict` (None: no answer)."""
    if verdict is Verdict.REFUSE:
        return StanzaError(Condition.SERVICE_UNAVAILABLE)
    if verdict is Verdict.BLOCKED:
        app = ET.Element(f"{{{NS_BLOCKING_ERRORS}}}blocked")
        return StanzaError(Condition.NOT_ACCEPTABLE, "you have blocked this JID", app=app)
    return None


# -- the lists: per active session, else the store's cache ---------------------------

def _active(ctx: FeatureContext, user: JID) -> list[Session]:
    return [s for s in ctx.sessions.resources(user) if s.kind is _ACTIVE]


def _keep(ctx: FeatureContext, user: JID, items: frozenset[str]) -> None:
    for session in _active(ctx, user):
        if session.blocked is None:
            session.blocked = items


def block_list_now(ctx: FeatureContext, user: JID) -> frozenset[str] | None:
    """The user's block list if it is at hand (a session's, or the store's cache:
    then kept on the user's active sessions)."""
    for session in ctx.sessions.resources(user):
        if session.blocked is not None and session.kind is _ACTIVE:
            return session.blocked
    items = ctx.store.blocked_now(user)
    if items is not None:
        _keep(ctx, user, items)
    return items


async def block_list(ctx: FeatureContext, user: JID) -> frozenset[str]:
    """The user's block list; kept on its active sessions here for their life."""
    items = block_list_now(ctx, user)
    if items is not None:
        return items
    items = await ctx.store.blocked(user)
    current = ctx.store.blocked_now(user)  # None: a change raced with the read
    if current is not None:
        _keep(ctx, user, current)
    return items


def forget_block_list(ctx: FeatureContext, user: JID) -> None:
    """The user's list changed (in the store): its sessions read it again."""
    for session in ctx.sessions.resources(user):
        session.blocked = None


# -- the router's check -------------------------------------------------------------

def _sender(stanza: ET.Element) -> JID | None:
    text = stanza.get("from")
    try:
        return JID.parse(text) if text else None
    except InvalidJid:
        return None


def _reaches_nobody(ctx: FeatureContext, stanza: ET.Element, to: JID) -> bool:
    return stanza.tag == "presence" and stanza.get("type") in _BROADCAST_TYPES and not ctx.sessions.resources(to.bare)


class BlockingGuard:
    """The router's blocking check (`server.router.StanzaGuard`)."""

    def inbound_now(self, ctx: FeatureContext, stanza: ET.Element, to: JID) -> Verdict | None:
        items = block_list_now(ctx, to.bare)
        if items is None:
            return Verdict.PASS if _reaches_nobody(ctx, stanza, to) else None
        return _inbound(items, stanza, to) if items else Verdict.PASS

    async def inbound(self, ctx: FeatureContext, stanza: ET.Element, to: JID) -> Verdict:
        if _reaches_nobody(ctx, stanza, to):
            return Verdict.PASS
        return _inbound(await block_list(ctx, to.bare), stanza, to)

    def outbound_now(self, ctx: FeatureContext, session: Session, stanza: ET.Element, to: JID) -> Verdict | None:
        items = session.blocked
        if items is None:
            return None
        return _outbound(items, to, stanza, session) if items else Verdict.PASS

    async def outbound(self, ctx: FeatureContext, session: Session, stanza: ET.Element, to: JID) -> Verdict:
        return _outbound(await block_list(ctx, session.bare), to, stanza, session)


def _inbound(items: frozenset[str], stanza: ET.Element, to: JID) -> Verdict:
    sender = _sender(stanza)
    if sender is None or sender.bare == to.bare:  # the user's own resources
        return Verdict.PASS
    return inbound(items, sender, stanza)


def _outbound(items: frozenset[str], to: JID, stanza: ET.Element, session: Session) -> Verdict:
    return Verdict.PASS if to.bare == session.bare else outbound(items, to, stanza)
