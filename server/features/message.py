"""Messages (RFC 6121 §5, §8.5): delivery by the one recipient rule, offline storage.

Rules of this module:
- Which sessions get a message for an account is `server.messaging.route_message`'s
  answer (the same rule serves messages a peer node routed here); this module
  executes it: hand it over and announce `MessageDelivered`, drop it, answer
  service-unavailable, or store it offline.
- Unknown accounts: service-unavailable (§8.5.1), unless the message is an error
  (errors are never answered). An unknown `type` counts as normal (§5.2.2).
- Offline storage (§8.5.2.2, XEP-0203): chat and normal with a body are stored, at
  most `quotas.offline_max_messages` messages and `quotas.offline_max_bytes` bytes
  per user (the store checks both); beyond that the sender gets service-unavailable
  saying the store is full (XEP-0160 §3). Messages without a body (chat
  states) or with a <no-store/> hint are not stored.
- Stored messages carry a XEP-0203 <delay/> stamped when stored, and go to the first
  session of non-negative priority that sends initial presence (`SessionAvailable`).
- Each message a client sends is announced as `MessageSent` (carbons use it).
- A message a client sends is archived (`server.archiving`, XEP-0313) for both
  parties before it is delivered (the archive's order is then the order in which
  anyone could have seen the messages: a reply never comes before what it answers)
  and so before the stream acknowledges it.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server import archiving
from presence_ha.server.messaging import Outcome, route_message
from presence_ha.server.router import Direction, MessageDelivered, MessageSent, Router, SessionAvailable, StanzaKind
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import MessageType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

DELAY = "{urn:xmpp:delay}delay"
NO_STORE = "{urn:xmpp:hints}no-store"


async def _hand(ctx: FeatureContext, stanza: ET.Element, targets: list[Session]) -> None:
    for session in targets:
        session.send(stanza)
    await ctx.notify(MessageDelivered(stanza, tuple(targets)))


def _stamped(ctx: FeatureContext, stanza: ET.Element) -> ET.Element:
    copy = ET.Element(stanza.tag, dict(stanza.attrib))
    copy.extend(list(stanza))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ET.SubElement(copy, DELAY, {"from": ctx.domain, "stamp": stamp}).text = "Offline Storage"
    return copy


async def _store_offline(ctx: FeatureContext, user: JID, stanza: ET.Element) -> None:
    if stanza.find("body") is None or stanza.find(NO_STORE) is not None:
        return
    if not await ctx.store.store_offline(user, _stamped(ctx, stanza)):
        raise StanzaError(Condition.SERVICE_UNAVAILABLE, f"offline message storage of {user} is full")
    # The user may have become available while the message was being stored, after its
    # initial presence took the stored messages: hand them over now, or they would
    # wait for the next login (a failover's re-login storm makes this race common).
    candidates = [s for s in ctx.sessions.available(user) if s.priority >= 0]
    if candidates:
        await flush_offline(ctx, SessionAvailable(max(candidates, key=lambda s: s.priority)))


async def inbound(ctx: FeatureContext, sender: Session | None, stanza: ET.Element) -> None:
    """A message for an account of our domain."""
    to = JID.parse(stanza.get("to", ""))
    kind = MessageType.of(stanza) or MessageType.NORMAL
    outcome, targets = route_message(ctx.sessions, to, kind)
    if targets:
        await _hand(ctx, stanza, targets)
        return
    if kind is MessageType.ERROR:
        return
    if not ctx.sessions.resources(to.bare) and not await ctx.store.user_exists(to.bare):
        raise StanzaError(Condition.SERVICE_UNAVAILABLE)
    if outcome is Outcome.REFUSE:
        raise StanzaError(Condition.SERVICE_UNAVAILABLE, "no groupchat service for user accounts")
    if outcome is Outcome.STORE:
        await _store_offline(ctx, to.bare, stanza)


async def outbound(ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
    """A message sent by a local client; without 'to' it goes to the user's own JID."""
    if not stanza.get("to"):
        stanza.set("to", str(session.bare))
    planned = await archiving.prepare(ctx, session, stanza)
    if planned:  # committed before delivery: a reply is never archived before what it answers
        await archiving.write(ctx, stanza, planned)
    await ctx.deliver(stanza, sender=session)
    await ctx.notify(MessageSent(session, stanza))


async def flush_offline(ctx: FeatureContext, event: SessionAvailable) -> None:
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
    router.disco_features.add("msgoffline")  # XEP-0160 §5: offline messages are stored
