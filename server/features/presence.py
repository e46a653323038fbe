"""Presence (RFC 6121 §4): broadcasts, probes, directed presence, disconnects.

Rules of this module:
- Sessions of kind INACTIVE show no presence and get none (SPEC §8): their presence
  stanzas are dropped, and delivery only ever targets active sessions.
- Presence without 'to' is a broadcast: the first one after binding is initial presence
  (§4.2): it makes the session available, goes to contacts with subscription from/both
  and to the user's own available resources, probes contacts with to/both, shows the
  new resource its siblings, and then announces `SessionAvailable` (pending
  subscription requests and offline messages follow it). Later ones are updates (§4.4).
- Every broadcast of available presence is written to the shared presence records
  before it is sent (the store group-commits concurrent writes), and unavailable
  presence deletes the record, so any node can
  answer a probe for this user (§4.3.2) and a backup node can take over.
- Probes are answered with the last presence of each available resource (local
  sessions, else the shared records) if the prober is allowed to see it (subscription
  from/both or the user itself); a prober without a subscription gets "unsubscribed";
  a user with no available resource gets no answer (§4.3.2 allows silence).
- A node that took over another node's users announces, after a grace period,
  unavailable for each of their resources that did not come back (`retire_orphans`):
  no flap for users who switch over, no ghost for those who don't.
- Directed presence (§4.6) to an entity without a 'from' subscription is remembered on
  the session, so it gets unavailable presence on the next broadcast of unavailable
  or when the session ends (`SessionClosed`).
- Delivery to an account (§8.5): to a full JID that resource if it is an active
  session, else dropped; to a bare JID every available resource (errors too: they
  answer subscription stanzas the server stamped with the bare JID).
- <priority/> must be an integer in -128..127 (RFC 6121 §4.7.2.3), else bad-request.
- `deliver_now` is `inbound`, synchronous and with the stanza's bytes already made (a
  presence a peer node routed here: broadcasts spread over nodes).
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from presence_ha.server.router import Direction, Router, SessionAvailable, SessionClosed, StanzaKind
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID

SEE_ME = ("from", "both")  # contacts subscribed to the user's presence
I_SEE = ("to", "both")  # contacts whose presence the user subscribed to
RETIRE_YIELD_EVERY = 50  # orphaned resources announced unavailable between two yields to the loop


def _copy(stanza: ET.Element, to: JID | str, sender: JID | str | None = None) -> ET.Element:
    copy = ET.Element(stanza.tag, dict(stanza.attrib))
    copy.extend(list(stanza))
    copy.set("to", str(to))
    if sender is not None:
        copy.set("from", str(sender))
    return copy


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


async def _to_contacts(ctx, session: Session, stanza: ET.Element, extra: set[str] = frozenset()) -> None:
    """`stanza` to the subscribers, to `extra` targets and to the user's other resources."""
    targets = [str(jid) for jid in await ctx.store.contacts(session.bare, SEE_ME)]
    for target in targets + sorted(extra - set(targets)):
        await ctx.deliver(_copy(stanza, target))
    for sibling in ctx.sessions.available(session.bare):
        if sibling is not session or stanza.get("type") is None:
            sibling.send(_copy(stanza, sibling.jid))


async def _initial(ctx, session: Session, probe: bool = True) -> None:
    """§4.2.2: probes, the siblings' presence, then queued traffic."""
    for contact in await ctx.store.contacts(session.bare, I_SEE) if probe else ():
        await ctx.deliver(ET.Element("presence", {"type": "probe", "from": str(session.jid), "to": str(contact)}))
    for sibling in ctx.sessions.available(session.bare):
        if sibling is not session and sibling.presence is not None:
            session.send(_copy(sibling.presence, session.jid, sibling.jid))
    await ctx.notify(SessionAvailable(session))


async def _available(ctx, session: Session, stanza: ET.Element) -> None:
    priority = _priority(stanza)
    initial = not session.available
    await ctx.store.put_presence(session.jid, priority, stanza)
    session.available, session.priority, session.presence = True, priority, stanza
    await _to_contacts(ctx, session, stanza)
    if initial:
        await _initial(ctx, session)


async def _unavailable(ctx, session: Session, stanza: ET.Element) -> None:
    """§4.5: to subscribers (if it was available), directed targets and siblings."""
    was_available = session.available
    targets, session.directed_to = set(session.directed_to), set()
    session.available, session.presence = False, None
    if was_available:
        await ctx.store.delete_presence(session.jid)
        await _to_contacts(ctx, session, stanza, targets)
        return
    for target in sorted(targets):
        await ctx.deliver(_copy(stanza, target))


async def _directed(ctx, session: Session, stanza: ET.Element) -> None:
    """§4.6: deliver; remember targets that are not subscribers."""
    target = JID.parse(stanza.get("to"))
    if stanza.get("type") == "unavailable":
        session.directed_to.discard(str(target))
    elif target.bare != session.bare:
        if await ctx.store.subscription_of(session.bare, target.bare) not in SEE_ME:
            session.directed_to.add(str(target))
    await ctx.deliver(stanza, sender=session)


async def outbound(ctx, session: Session, stanza: ET.Element) -> None:
    """Available or unavailable presence sent by a local client."""
    if session.kind is SessionKind.INACTIVE:
        return
    if stanza.get("to"):
        await _directed(ctx, session, stanza)
    elif stanza.get("type") == "unavailable":
        await _unavailable(ctx, session, stanza)
    else:
        await _available(ctx, session, stanza)


async def inbound(ctx, sender: Session | None, stanza: ET.Element) -> None:
    """Available, unavailable or error presence for an account of our domain."""
    deliver_now(ctx, stanza, JID.parse(stanza.get("to")))


INBOUND_TYPES = (None, "unavailable", "error")  # the presence types `inbound` handles


def deliver_now(ctx, stanza: ET.Element, to: JID, wire: bytes | None = None) -> None:
    """`inbound` for `stanza` (its type one of `INBOUND_TYPES`) to `to`; `wire`: the
    stanza already serialized (`Session.send`)."""
    if not to.is_bare:
        target = ctx.sessions.get(to)
        if target is not None and target.kind is SessionKind.ACTIVE:
            target.send(stanza, wire)
        return
    for session in ctx.sessions.available(to):
        session.send(stanza, wire)


async def _current(ctx, user: JID) -> list[ET.Element]:
    """The last presence of each available resource of `user`, on any node."""
    local = [s for s in ctx.sessions.available(user) if s.presence is not None]
    if local:
        return [_copy(s.presence, "", s.jid) for s in local]
    return [_copy(r.stanza, "", user.with_resource(r.resource)) for r in await ctx.store.presences(user)]


async def probe(ctx, sender: Session | None, stanza: ET.Element) -> None:
    """§4.3.2: answer a probe on behalf of the probed account."""
    if not stanza.get("from"):
        return
    user, prober = JID.parse(stanza.get("to")).bare, JID.parse(stanza.get("from"))
    if prober.bare != user:
        # One cached roster read, not two transactions per probe (None: no such account).
        if await ctx.store.subscription_of(user, prober.bare) not in SEE_ME:
            refusal = ET.Element("presence", {"type": "unsubscribed", "from": str(user), "to": str(prober.bare)})
            await ctx.deliver(refusal)
            return
    for presence in await _current(ctx, user):
        presence.set("to", str(prober))
        await ctx.deliver(presence)


def resume_available(session: Session, priority: int, stanza: ET.Element) -> None:
    """A session taken over by another node carries on with its last presence (SPEC
    §8): available from now on, so stanzas for the user reach it at once; then call
    `announce_resumed` to announce it as initial presence is announced."""
    session.available, session.priority, session.presence = True, priority, stanza


async def announce_resumed(ctx, session: Session) -> None:
    """The rest of initial presence for a resumed session: the shared record (now this
    node's), probes, the siblings' presence, queued traffic. Nothing goes to the
    contacts: they never saw the resource go unavailable (the old node let it go
    without a word), so what they show is still right, and a takeover of thousands
    of users does not re-send thousands of broadcasts while they switch. A client that
    keeps its contacts' presence across the switch (`keeps_contacts`) is not sent it
    again either: what changed meanwhile was routed to the user and not acknowledged
    by the dead node, and is routed again once the session is active."""
    if not session.available or session.presence is None:
        return
    await ctx.store.put_presence(session.jid, session.priority, session.presence)
    await _initial(ctx, session, probe=not session.keeps_contacts)


async def retire_orphans(ctx, writer: str) -> int:
    """After a takeover of `writer`'s users and a grace period (SPEC §8): every
    resource whose shared presence `writer` wrote and that did not come back here
    (activated, resumed, or logged in again with that resource) is announced
    unavailable to its contacts, once: the records go first, in one transaction, and
    only those `writer` still owns. Thousands of users may not be back (a re-login
    storm): the announcements yield to live traffic every `RETIRE_YIELD_EVERY`
    resources. Returns how many were retired."""
    back = {(s.jid.local, s.jid.resource or "") for s in ctx.sessions
            if s.kind is SessionKind.ACTIVE and s.available}
    retired = 0
    for full in await ctx.store.retire_orphans(writer, back):
        now = ctx.sessions.get(full)
        if now is not None and now.kind is SessionKind.ACTIVE and now.available:
            continue  # back meanwhile: its own announcement writes its record again
        retired += 1
        gone = ET.Element("presence", {"type": "unavailable", "from": str(full)})
        for contact in await ctx.store.contacts(full.bare, SEE_ME):
            await ctx.deliver(_copy(gone, contact))
        for sibling in ctx.sessions.available(full.bare):
            sibling.send(_copy(gone, sibling.jid))
        if retired % RETIRE_YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return retired


async def closed(ctx, event: SessionClosed) -> None:
    """The session ended: unavailable presence as if the client had sent it (§4.5.2)."""
    session = event.session
    if session.kind is SessionKind.INACTIVE or not (session.available or session.directed_to):
        return
    await _unavailable(ctx, session, ET.Element("presence", {"type": "unavailable", "from": str(session.jid)}))


def register(router: Router) -> None:
    router.stanza(StanzaKind.PRESENCE, Direction.OUT, (None, "unavailable"))(outbound)
    router.stanza(StanzaKind.PRESENCE, Direction.IN, INBOUND_TYPES)(inbound)
    router.stanza(StanzaKind.PRESENCE, Direction.IN, ("probe",))(probe)
    router.observe(SessionClosed)(closed)
