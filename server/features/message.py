"""Message delivery (RFC 6121 §8.5) and offline storage (§8.5.2.2, XEP-0203).

Rules of this module:
- Only ACTIVE sessions receive messages; an INACTIVE (backup) session never does
  (SPEC §8), not even when addressed by full JID.
- To a full JID (§8.5.3): that resource if it is an active session; otherwise chat and
  normal are handled as if sent to the bare JID, headline is dropped, groupchat gets
  service-unavailable.
- To a bare JID (§8.5.2.1): chat and normal go to the available resources of the
  highest non-negative priority, headline to every available resource of non-negative
  priority, groupchat gets service-unavailable.
- No such resource (§8.5.2.2): chat and normal with a body are stored offline, at most
  `offline_message_limit` per user (settings, default `OFFLINE_LIMIT`); beyond that
  the sender gets service-unavailable saying the store is full. Messages without a
  body (chat states) or with a <no-store/> hint are not stored. Headline is dropped.
- Unknown accounts: service-unavailable (§8.5.1). Errors are never answered.
- Stored messages carry a XEP-0203 <delay/> stamped when stored, and go to the first
  session of non-negative priority that sends initial presence (`SessionAvailable`).
- Each delivery is announced as `MessageDelivered`, each message a client sends as
  `MessageSent` (carbons use both).
- `deliver_now` is `inbound` for the common case of a message a peer node routed here,
  without a coroutine and without serializing it again: chat, normal or headline, to
  an account none of whose sessions wants carbons, with a session here to take it.
  Anything else (offline storage, errors, carbons) is `inbound`'s. It skips the
  `MessageDelivered` announcement, which is right while carbons' `copy_received` is
  that event's only observer (tested): it does nothing without carbons.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from presence_ha.server.router import Direction, MessageDelivered, MessageSent, Router, SessionAvailable, StanzaKind
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID

OFFLINE_LIMIT = 200
DELAY = "{urn:xmpp:delay}delay"
NO_STORE = "{urn:xmpp:hints}no-store"


def _offline_limit(ctx) -> int:
    # Settings are NODE's object; the limit is optional there, hence getattr.
    return int(getattr(ctx.settings, "offline_message_limit", OFFLINE_LIMIT))


async def _hand(ctx, stanza: ET.Element, targets: list[Session]) -> None:
    for session in targets:
        session.send(stanza)
    await ctx.notify(MessageDelivered(stanza, tuple(targets)))


def _stamped(ctx, stanza: ET.Element) -> ET.Element:
    copy = ET.Element(stanza.tag, dict(stanza.attrib))
    copy.extend(list(stanza))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ET.SubElement(copy, DELAY, {"from": ctx.domain, "stamp": stamp}).text = "Offline Storage"
    return copy


async def _store_offline(ctx, user: JID, stanza: ET.Element) -> None:
    if stanza.find("body") is None or stanza.find(NO_STORE) is not None:
        return
    if not await ctx.store.store_offline(user, _stamped(ctx, stanza), _offline_limit(ctx)):
        raise StanzaError(Condition.SERVICE_UNAVAILABLE, f"offline message storage of {user} is full")
    # The user may have become available while the message was being stored, after its
    # initial presence took the stored messages: hand them over now, or they would
    # wait for the next login (a failover's re-login storm makes this race common).
    candidates = [s for s in ctx.sessions.available(user) if s.priority >= 0]
    if candidates:
        await flush_offline(ctx, SessionAvailable(max(candidates, key=lambda s: s.priority)))


def _recipients(candidates: list[Session], kind: str) -> list[Session]:
    """§8.5.2.1, of the available resources of non-negative priority: a headline goes
    to all of them, chat and normal to those of the highest priority."""
    if kind == "headline" or len(candidates) < 2:
        return candidates
    top = max(s.priority for s in candidates)
    return [s for s in candidates if s.priority == top]


async def _to_bare(ctx, user: JID, stanza: ET.Element, kind: str) -> None:
    if kind == "groupchat":
        raise StanzaError(Condition.SERVICE_UNAVAILABLE, "no groupchat service for user accounts")
    candidates = [s for s in ctx.sessions.available(user) if s.priority >= 0]
    if candidates:
        await _hand(ctx, stanza, _recipients(candidates, kind))
    elif kind != "headline":
        await _store_offline(ctx, user, stanza)


async def inbound(ctx, sender: Session | None, stanza: ET.Element) -> None:
    """A message for an account of our domain."""
    to = JID.parse(stanza.get("to"))
    kind = stanza.get("type") or "normal"
    target = ctx.sessions.get(to) if not to.is_bare else None
    if target is not None and target.kind is SessionKind.ACTIVE:
        await _hand(ctx, stanza, [target])
        return
    if kind == "error":
        return
    if not ctx.sessions.resources(to.bare) and not await ctx.store.user_exists(to.bare):
        raise StanzaError(Condition.SERVICE_UNAVAILABLE)
    if not to.is_bare and kind == "headline":
        return
    await _to_bare(ctx, to.bare, stanza, kind)


def deliver_now(ctx, stanza: ET.Element, to: JID, wire: bytes) -> bool:
    """Deliver the message `stanza` for `to` (of our domain), whose serialized form is
    `wire`, at once; False: nothing was done, take `inbound`."""
    kind = stanza.get("type") or "normal"
    if kind not in _NOW_TYPES:
        return False
    resources = ctx.sessions.resources(to.bare)
    if not resources or any(s.carbons for s in resources):
        return False
    if not to.is_bare:
        target = ctx.sessions.get(to)
        if target is None or target.kind is not SessionKind.ACTIVE:
            return False
        targets = [target]
    else:
        candidates = [s for s in resources if s.kind is SessionKind.ACTIVE and s.available and s.priority >= 0]
        if not candidates:
            return False
        targets = _recipients(candidates, kind)
    for session in targets:
        session.send(stanza, wire)
    return True


_NOW_TYPES = frozenset(("chat", "normal", "headline"))


async def outbound(ctx, session: Session, stanza: ET.Element) -> None:
    """A message sent by a local client; without 'to' it goes to the user's own JID."""
    if not stanza.get("to"):
        stanza.set("to", str(session.bare))
    await ctx.deliver(stanza, sender=session)
    await ctx.notify(MessageSent(session, stanza))


async def flush_offline(ctx, event: SessionAvailable) -> None:
    """§8.5.2.2: stored messages to the first resource of non-negative priority."""
    session = event.session
    if session.priority < 0:
        return
    for stanza in await ctx.store.pop_offline(session.bare):
        session.send(stanza)


def register(router: Router) -> None:
    router.stanza(StanzaKind.MESSAGE, Direction.OUT)(outbound)
    router.stanza(StanzaKind.MESSAGE, Direction.IN)(inbound)
    router.observe(SessionAvailable)(flush_offline)
