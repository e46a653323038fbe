"""XEP-0191 Blocking Command: the user's block list, its pushes and presence effects.

Rules of this module:
- The block list lives in the availability database (`ctx.store.block`, `unblock`,
  `block_list`): it survives failover, fallback and user moves, and every node reads
  the same one. Which stanzas it stops is `server.blocking`'s rule, applied by the
  router; the store caches the list with the roster (no query per stanza).
- Only the user's own block list is reachable: an IQ to another account is answered
  on its behalf by nobody (service-unavailable, the router's default). It is changed
  from an active session only (`not-allowed` on a backup connection, SPEC §8): the
  active sessions keep the list (`server.blocking`), and they are all on the node
  serving the user.
- `<blocklist/>` get returns the items and subscribes the session to pushes (§3.2).
  `<block/>` needs at least one item (bad-request, §3.3); `<unblock/>` without items
  empties the list (§3.6). A malformed JID is `jid-malformed`. Each change is pushed to
  every active resource of the user that asked for the list (§3.3, §3.5) -- all of a
  user's active sessions are on its serving node (the cluster relays the others), so
  no other node has a session to tell.
- Blocking a contact the user lets see its presence (subscription from/both) sends it
  unavailable presence from each available resource (§3.3); unblocking sends it the
  current presence of each, and probes contacts the user sees (to/both) so their
  presence, dropped while blocked, shows again.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.blocking import NS_BLOCKING, block_list, forget_block_list, is_blocked
from presence_ha.server.presence_service import I_SEE, SEE_ME
from presence_ha.server.router import Router
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.stanzas import IqType, PresenceType, presence, readdressed

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

BLOCKLIST = f"{{{NS_BLOCKING}}}blocklist"
BLOCK = f"{{{NS_BLOCKING}}}block"
UNBLOCK = f"{{{NS_BLOCKING}}}unblock"
ITEM = f"{{{NS_BLOCKING}}}item"
MAX_ITEMS = 1000  # per block list: bounds what every stanza to the user is matched against


def _items(query: ET.Element) -> list[str]:
    """The items' JIDs in prepared text form, in order, without duplicates."""
    jids: dict[str, None] = {}
    for item in query.findall(ITEM):
        try:
            jids[str(JID.parse(item.get("jid") or ""))] = None
        except InvalidJid as exc:
            raise StanzaError(Condition.JID_MALFORMED, str(exc)) from exc
    return list(jids)


def _check_own(session: Session, iq: ET.Element) -> None:
    to = iq.get("to")
    if to and JID.parse(to) not in (session.bare, JID(None, session.jid.domain)):
        raise StanzaError(Condition.FORBIDDEN, "only your own block list can be read or changed")


def _check_change(session: Session, iq: ET.Element) -> None:
    _check_own(session, iq)
    if session.kind is SessionKind.INACTIVE:
        raise StanzaError(Condition.NOT_ALLOWED, "change the block list on your active connection")


def _element(tag: str, jids: list[str]) -> ET.Element:
    query = ET.Element(tag)
    for jid in jids:
        ET.SubElement(query, ITEM, {"jid": jid})
    return query


def _push(ctx: FeatureContext, user: JID, tag: str, jids: list[str]) -> None:
    for session in ctx.sessions.active(user):
        if session.blocklist_interested:
            push = ET.Element("iq", {"type": "set", "id": f"push-{uuid.uuid4().hex[:12]}", "to": str(session.jid)})
            push.append(_element(tag, jids))
            session.send(push)


async def blocklist(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_own(session, iq)
    session.blocklist_interested = True
    return _element(BLOCKLIST, await ctx.store.block_list(session.bare))


async def block(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    _check_change(session, iq)
    jids = _items(iq[0])
    if not jids:
        raise StanzaError(Condition.BAD_REQUEST, "a block carries at least one item")
    if len(set(await ctx.store.block_list(session.bare)) | set(jids)) > MAX_ITEMS:
        raise StanzaError(Condition.NOT_ACCEPTABLE, f"a block list holds at most {MAX_ITEMS} items")
    added = await ctx.store.block(session.bare, jids)
    forget_block_list(ctx, session.bare)
    _push(ctx, session.bare, BLOCK, jids)
    if added:
        await _hide_from(ctx, session.bare, frozenset(added))


async def unblock(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    _check_change(session, iq)
    jids = _items(iq[0])
    removed = await ctx.store.unblock(session.bare, jids or None)
    forget_block_list(ctx, session.bare)
    _push(ctx, session.bare, UNBLOCK, jids)
    if removed:
        await _show_to(ctx, session.bare, frozenset(removed))


async def _hide_from(ctx: FeatureContext, user: JID, added: frozenset[str]) -> None:
    """§3.3: the newly blocked contacts that saw the user's presence see it end."""
    for contact in await ctx.store.contacts(user, SEE_ME):
        if is_blocked(added, contact):
            for resource in ctx.sessions.available(user):
                await ctx.deliver(presence(PresenceType.UNAVAILABLE, resource.jid, contact))


async def _show_to(ctx: FeatureContext, user: JID, removed: frozenset[str]) -> None:
    """The unblocked contacts see the user's presence again, and it sees theirs."""
    still = await block_list(ctx, user)
    available = ctx.sessions.available(user)
    for contact in await ctx.store.contacts(user, SEE_ME):
        if is_blocked(removed, contact) and not is_blocked(still, contact):
            for resource in available:
                if resource.presence is not None:
                    await ctx.deliver(readdressed(resource.presence, contact, resource.jid))
    for contact in await ctx.store.contacts(user, I_SEE):
        if is_blocked(removed, contact) and not is_blocked(still, contact):
            for resource in available:
                await ctx.deliver(presence(PresenceType.PROBE, resource.jid, contact))


def register(router: Router) -> None:
    router.iq(IqType.GET, BLOCKLIST)(blocklist)
    router.iq(IqType.SET, BLOCK)(block)
    router.iq(IqType.SET, UNBLOCK)(unblock)
    router.disco_features.add(NS_BLOCKING)
