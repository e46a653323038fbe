"""Presence as the rest of the node needs it (RFC 6121 §4; SPEC §8 moves and takeovers).

Rules of this module:
- Below the features, above the router, sessions and store: the presence feature
  calls it for what a client does, the cluster for presence a peer node routed here
  (`deliver_now`), and the SRM and the cluster's session replicas for sessions that
  change nodes (`resume_available`, `announce_resumed`, `retire_orphans`).
- Sessions of kind INACTIVE show no presence and get none (SPEC §8): delivery only
  ever targets active sessions.
- Delivery to an account (§8.5): to a full JID that resource if it is an active
  session, else dropped; to a bare JID every available resource (errors too: they
  answer subscription stanzas the server stamped with the bare JID). This covers the
  presence types of `INBOUND`; probes and subscriptions have their own features.
- Initial presence (§4.2.2) is announced by `announce_available`: probes to the
  contacts the user sees, the siblings' presence to the new resource, then
  `SessionAvailable` (pending subscription requests and offline messages follow).
- A session taken over from another node carries on with its last presence: it is
  made available at once (`resume_available`), and announced later
  (`announce_resumed`): the shared record becomes this node's, nothing goes to its
  contacts (they never saw it go).
- A node that took over another node's users announces, after a grace period,
  unavailable for each of their resources that did not come back (`retire_orphans`):
  no flap for users who switch over, no ghost for those who don't.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import SessionAvailable
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import PresenceType, Subscription, readdressed, type_values

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

SEE_ME = (Subscription.FROM, Subscription.BOTH)  # contacts subscribed to the user's presence
I_SEE = (Subscription.TO, Subscription.BOTH)  # contacts whose presence the user subscribed to
INBOUND = (PresenceType.AVAILABLE, PresenceType.UNAVAILABLE, PresenceType.ERROR)  # what `deliver_now` delivers
INBOUND_TYPES = type_values(*INBOUND)  # their `type` attribute values (route keys)
RETIRE_YIELD_EVERY = 50  # orphaned resources announced unavailable between two yields to the loop


def deliver_now(ctx: FeatureContext, stanza: ET.Element, to: JID, wire: bytes | None = None) -> None:
    """Deliver `stanza` (its type one of `INBOUND`) to the account `to`; `wire`: the
    stanza already serialized (`Session.send`)."""
    if not to.is_bare:
        target = ctx.sessions.get(to)
        if target is not None and target.kind is SessionKind.ACTIVE:
            target.send(stanza, wire)
        return
    for session in ctx.sessions.available(to):
        session.send(stanza, wire)


async def announce_available(ctx: FeatureContext, session: Session, probe: bool = True) -> None:
    """§4.2.2 after initial presence: probes, the siblings' presence, then queued traffic."""
    for contact in await ctx.store.contacts(session.bare, I_SEE) if probe else ():
        await ctx.deliver(ET.Element("presence", {"type": "probe", "from": str(session.jid), "to": str(contact)}))
    for sibling in ctx.sessions.available(session.bare):
        if sibling is not session and sibling.presence is not None:
            session.send(readdressed(sibling.presence, session.jid, sibling.jid))
    await ctx.notify(SessionAvailable(session))


def resume_available(session: Session, priority: int, stanza: ET.Element) -> None:
    """A session taken over by another node carries on with its last presence (SPEC
    §8): available from now on, so stanzas for the user reach it at once; then call
    `announce_resumed` to announce it as initial presence is announced."""
    session.available, session.priority, session.presence = True, priority, stanza


async def announce_resumed(ctx: FeatureContext, session: Session) -> None:
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
    await announce_available(ctx, session, probe=not session.keeps_contacts)


async def retire_orphans(ctx: FeatureContext, writer: str) -> int:
    """After a takeover of `writer`'s users and a grace period (SPEC §8): every
    resource whose shared presence `writer` wrote and that did not come back here
    (activated, resumed, or logged in again with that resource) is announced
    unavailable to its contacts, once: the records go first, in one transaction, and
    only those `writer` still owns. Thousands of users may not be back (a re-login
    storm): the announcements yield to live traffic every `RETIRE_YIELD_EVERY`
    resources. Returns how many were retired."""
    back = {(s.jid.local or "", s.jid.resource or "") for s in ctx.sessions
            if s.kind is SessionKind.ACTIVE and s.available}
    retired = 0
    for full in await ctx.store.retire_orphans(writer, back):
        now = ctx.sessions.get(full)
        if now is not None and now.kind is SessionKind.ACTIVE and now.available:
            continue  # back meanwhile: its own announcement writes its record again
        retired += 1
        gone = ET.Element("presence", {"type": "unavailable", "from": str(full)})
        for contact in await ctx.store.contacts(full.bare, SEE_ME):
            await ctx.deliver(readdressed(gone, contact))
        for sibling in ctx.sessions.available(full.bare):
            sibling.send(readdressed(gone, sibling.jid))
        if retired % RETIRE_YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return retired
