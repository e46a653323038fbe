"""Presence (RFC 6121 §4): broadcasts, probes, directed presence, disconnects.

Rules of this module:
- Sessions of kind INACTIVE show no presence and get none (SPEC §8): their presence
  stanzas are dropped, and delivery only ever targets active sessions.
- Presence without 'to' is a broadcast: the first one after binding is initial presence
  (§4.2): it makes the session available, goes to contacts with subscription from/both
  and to the user's own available resources, then is announced
  (`presence_service.announce_available`: probes, the siblings' presence,
  `SessionAvailable`). Later ones are updates (§4.4).
- Every broadcast of available presence is written to the shared presence records
  before it is sent (the store group-commits concurrent writes), and unavailable
  presence deletes the record, so any node can
  answer a probe for this user (§4.3.2) and a backup node can take over.
- Probes are answered with the last presence of each available resource (local
  sessions, else the shared records) if the prober is allowed to see it (subscription
  from/both or the user itself); a prober without a subscription gets "unsubscribed";
  a user with no available resource gets no answer (§4.3.2 allows silence).
- Directed presence (§4.6) to an entity without a 'from' subscription is remembered on
  the session, so it gets unavailable presence on the next broadcast of unavailable
  or when the session ends (`SessionClosed`).
- Delivery to an account (§8.5) is `presence_service.deliver_now` (the same rule
  serves presence a peer node routed here).
- Blocked contacts (XEP-0191 §3.3) are left out of broadcasts; the block list is the
  session's (`server.blocking.block_list`: read with the roster, no query of its
  own). Each resource that goes unavailable is announced as `ResourceUnavailable`
  (last activity, XEP-0012, records it).
- <priority/> must be an integer in -128..127 (RFC 6121 §4.7.2.3), else bad-request.
- Sessions changing nodes (takeover, activation, resumption) are the presence
  service's (`server.presence_service`), not this module's.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.blocking import block_list, is_blocked
from presence_ha.server.presence_service import INBOUND_TYPES, SEE_ME, announce_available, deliver_now
from presence_ha.server.router import (
    Direction,
    PresenceBroadcast,
    ResourceUnavailable,
    Router,
    SessionClosed,
    StanzaKind,
)
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import PresenceType, readdressed, type_values

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

OUTBOUND_TYPES = type_values(PresenceType.AVAILABLE, PresenceType.UNAVAILABLE)  # what `outbound` handles


def _priority(stanza: ET.Element) -> int:
    text = stanza.findtext("priority")
    if text is None:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not -128 <= value <= 127:
        raise StanzaError(Condition.BAD_REQUEST, "priority must be an integer from -128 to 127")
    return value


async def _to_contacts(
    ctx: FeatureContext, session: Session, stanza: ET.Element, extra: frozenset[str] | set[str] = frozenset()
) -> None:
    """`stanza` to the subscribers, to `extra` targets and to the user's other resources."""
    contacts = await ctx.store.contacts(session.bare, SEE_ME)
    blocked = await block_list(ctx, session.bare)  # the session's, or read with the contacts
    targets = [str(jid) for jid in contacts if not (blocked and is_blocked(blocked, jid))]
    for target in targets + sorted(extra - set(targets)):
        await ctx.deliver(readdressed(stanza, target))
    available = PresenceType.of(stanza) is PresenceType.AVAILABLE
    for sibling in ctx.sessions.available(session.bare):
        if sibling is not session or available:
            sibling.send(readdressed(stanza, sibling.jid))


async def _available(ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
    priority = _priority(stanza)
    initial = not session.available
    previous = session.presence
    await ctx.store.put_presence(session.jid, priority, stanza)
    session.available, session.priority, session.presence = True, priority, stanza
    await _to_contacts(ctx, session, stanza)
    if initial:
        await announce_available(ctx, session)
    await ctx.notify(PresenceBroadcast(session, None if initial else previous))


async def _unavailable(ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
    """§4.5: to subscribers (if it was available), directed targets and siblings."""
    was_available = session.available
    targets, session.directed_to = set(session.directed_to), set()
    session.available, session.presence = False, None
    if was_available:
        await ctx.store.delete_presence(session.jid)
        await _to_contacts(ctx, session, stanza, targets)
        await ctx.notify(ResourceUnavailable(session, stanza))
        return
    for target in sorted(targets):
        await ctx.deliver(readdressed(stanza, target))


async def _directed(ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
    """§4.6: deliver; remember targets that are not subscribers."""
    target = JID.parse(stanza.get("to", ""))
    if PresenceType.of(stanza) is PresenceType.UNAVAILABLE:
        session.directed_to.discard(str(target))
    elif target.bare != session.bare and await ctx.store.subscription_of(session.bare, target.bare) not in SEE_ME:
        session.directed_to.add(str(target))
    await ctx.deliver(stanza, sender=session)


async def outbound(ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
    """Available or unavailable presence sent by a local client."""
    if session.kind is SessionKind.INACTIVE:
        return
    if stanza.get("to"):
        await _directed(ctx, session, stanza)
    elif PresenceType.of(stanza) is PresenceType.UNAVAILABLE:
        await _unavailable(ctx, session, stanza)
    else:
        await _available(ctx, session, stanza)


async def inbound(ctx: FeatureContext, sender: Session | None, stanza: ET.Element) -> None:
    """Available, unavailable or error presence for an account of our domain."""
    deliver_now(ctx, stanza, JID.parse(stanza.get("to", "")))


async def _current(ctx: FeatureContext, user: JID) -> list[ET.Element]:
    """The last presence of each available resource of `user`, on any node."""
    local = [readdressed(s.presence, "", s.jid) for s in ctx.sessions.available(user) if s.presence is not None]
    if local:
        return local
    return [readdressed(r.stanza, "", user.with_resource(r.resource)) for r in await ctx.store.presences(user)]


async def probe(ctx: FeatureContext, sender: Session | None, stanza: ET.Element) -> None:
    """§4.3.2: answer a probe on behalf of the probed account."""
    if not stanza.get("from"):
        return
    user, prober = JID.parse(stanza.get("to", "")).bare, JID.parse(stanza.get("from", ""))
    # One cached roster read, not two transactions per probe (None: no such account).
    if prober.bare != user and await ctx.store.subscription_of(user, prober.bare) not in SEE_ME:
        refusal = ET.Element("presence", {"type": "unsubscribed", "from": str(user), "to": str(prober.bare)})
        await ctx.deliver(refusal)
        return
    for presence in await _current(ctx, user):
        presence.set("to", str(prober))
        await ctx.deliver(presence)


async def closed(ctx: FeatureContext, event: SessionClosed) -> None:
    """The session ended: unavailable presence as if the client had sent it (§4.5.2)."""
    session = event.session
    if session.kind is SessionKind.INACTIVE or not (session.available or session.directed_to):
        return
    await _unavailable(ctx, session, ET.Element("presence", {"type": "unavailable", "from": str(session.jid)}))


def register(router: Router) -> None:
    router.stanza(StanzaKind.PRESENCE, Direction.OUT, OUTBOUND_TYPES)(outbound)
    router.stanza(StanzaKind.PRESENCE, Direction.IN, INBOUND_TYPES)(inbound)
    router.stanza(StanzaKind.PRESENCE, Direction.IN, type_values(PresenceType.PROBE))(probe)
    router.observe(SessionClosed)(closed)
