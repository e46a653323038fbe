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
- `BlockingGuard` applies the rule for the router with the block lists the store
  caches with the rosters (`server.store.Store.blocked`): no query per stanza.
  `inbound_now` answers without awaiting when the recipient's list is cached (the
  routed fast path), else None: the caller takes the router's way. Presence
  broadcasts (available, unavailable, error) for an account with no session here
  reach nobody anyway: they pass without the list (no roster read for an offline
  contact); subscription stanzas and probes are always checked.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Collection
from typing import TYPE_CHECKING

from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID, InvalidJid

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.sessions import Session

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"


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


_BROADCAST_TYPES = (None, "unavailable", "error")  # presence that goes only to sessions


def _reaches_nobody(ctx: FeatureContext, stanza: ET.Element, to: JID) -> bool:
    return stanza.tag == "presence" and stanza.get("type") in _BROADCAST_TYPES and not ctx.sessions.resources(to.bare)


def _sender(stanza: ET.Element) -> JID | None:
    text = stanza.get("from")
    try:
        return JID.parse(text) if text else None
    except InvalidJid:
        return None


class BlockingGuard:
    """The router's blocking check (`server.router.StanzaGuard`)."""

    async def inbound(self, ctx: FeatureContext, stanza: ET.Element, to: JID) -> Verdict:
        sender = _sender(stanza)
        if sender is None or sender.bare == to.bare or _reaches_nobody(ctx, stanza, to):
            return Verdict.PASS
        return inbound(await ctx.store.blocked(to.bare), sender, stanza)

    def inbound_now(self, ctx: FeatureContext, stanza: ET.Element, to: JID) -> Verdict | None:
        if _reaches_nobody(ctx, stanza, to):
            return Verdict.PASS
        items = ctx.store.blocked_now(to.bare)
        if items is None:
            return None
        return inbound(items, _sender(stanza), stanza) if items else Verdict.PASS

    async def outbound(self, ctx: FeatureContext, session: Session, stanza: ET.Element, to: JID) -> Verdict:
        if to.bare == session.bare:
            return Verdict.PASS
        return outbound(await ctx.store.blocked(session.bare), to, stanza)
