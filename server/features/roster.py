"""Roster management (RFC 6121 §2): get, set, remove, and roster pushes.

Rules of this module:
- A roster get marks the session "interested" (§2.2); every roster change, made here
  or by the subscription machine, is a `RosterItemChanged` fact, and this module pushes
  the item as it now is to every interested active resource of the user (§2.1.6).
- A roster set carries exactly one item (bad-request otherwise), the item's JID must
  be a valid bare JID, groups must be non-empty (not-acceptable), unique (bad-request)
  and within `MAX_TEXT` characters like the name (not-acceptable) (§2.3.3). A
  `subscription` other than "remove" and any `ask` are ignored: subscription state
  changes only through presence stanzas (§2.1.2.5).
- Quotas (`server.quotas`): an item whose name and groups exceed
  `quotas.roster_item_max_bytes` is `not-acceptable`; a new item beyond
  `quotas.roster_max_items` is `not-allowed` (updating an item is always possible).
- Only the user's own roster is reachable: a roster IQ addressed to another account is
  `forbidden` (§2.1.5).
- Removing an item cancels the subscriptions both ways (§2.5.2): "unsubscribe" if the
  user had or asked for one, "unsubscribed" (after unavailable presence) if the
  contact had or asked for one. The contact's side runs through normal delivery.
- Roster versioning (§2.6, XEP-0237): the version is a hash of the roster as
  stored (`roster_version`), so it is the same on every node and after a failover,
  with nothing more to store. A get whose `ver` equals it is answered with an empty
  result (§2.6.3); any other get that carries `ver` gets the whole roster with the
  current version. Pushes to a session that asked with `ver` carry the version after
  the change (only then is the whole roster read for a push).
"""

from __future__ import annotations

import hashlib
import json
import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.quotas import QuotaExceeded
from presence_ha.server.router import RosterItemChanged, Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.stanzas import IqType, PresenceType, presence

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.store import RosterRow

NS_ROSTER = "jabber:iq:roster"
QUERY = f"{{{NS_ROSTER}}}query"
ITEM = f"{{{NS_ROSTER}}}item"
GROUP = f"{{{NS_ROSTER}}}group"
MAX_TEXT = 1023  # longest item name or group name accepted (characters)


def item_element(contact: str, row: RosterRow | None) -> ET.Element:
    """The <item/> for a store roster row, or a removal item when `row` is None."""
    if row is None:
        return ET.Element(ITEM, {"jid": contact, "subscription": "remove"})
    item = ET.Element(ITEM, {"jid": row.contact, "subscription": row.subscription})
    if row.name:
        item.set("name", row.name)
    if row.ask:
        item.set("ask", "subscribe")
    if row.approved:
        item.set("approved", "true")
    for name in row.groups:
        ET.SubElement(item, GROUP).text = name
    return item


def roster_version(rows: list[RosterRow]) -> str:
    """A digest of every item as stored: equal for equal rosters, on any node."""
    canonical = sorted((r.contact, r.name or "", r.subscription, r.ask, r.approved, sorted(r.groups)) for r in rows)
    return hashlib.sha1(json.dumps(canonical).encode()).hexdigest()


def _check_own(session: Session, iq: ET.Element) -> None:
    to = iq.get("to")
    if to and JID.parse(to) not in (session.bare, JID(None, session.jid.domain)):
        raise StanzaError(Condition.FORBIDDEN, "only your own roster can be read or changed")


def _single_item(query: ET.Element) -> ET.Element:
    items = query.findall(ITEM)
    if len(items) != 1 or len(query) != 1:
        raise StanzaError(Condition.BAD_REQUEST, "a roster set carries exactly one item")
    return items[0]


def _contact(item: ET.Element) -> JID:
    text = item.get("jid")
    if not text:
        raise StanzaError(Condition.BAD_REQUEST, "the item has no jid")
    try:
        contact = JID.parse(text)
    except InvalidJid as exc:
        raise StanzaError(Condition.JID_MALFORMED, str(exc)) from exc
    if not contact.is_bare:
        raise StanzaError(Condition.BAD_REQUEST, "roster items are bare JIDs")
    return contact


def _name_and_groups(item: ET.Element) -> tuple[str | None, list[str]]:
    name = item.get("name") or None
    if name is not None and len(name) > MAX_TEXT:
        raise StanzaError(Condition.NOT_ACCEPTABLE, "the item name is too long")
    groups = [(group.text or "") for group in item.findall(GROUP)]
    if any(not g or len(g) > MAX_TEXT for g in groups):
        raise StanzaError(Condition.NOT_ACCEPTABLE, "a group name is empty or too long")
    if len({g.casefold() for g in groups}) != len(groups):
        raise StanzaError(Condition.BAD_REQUEST, "the item lists a group twice")
    return name, groups


async def _remove(ctx: FeatureContext, session: Session, contact: JID) -> None:
    old = await ctx.store.remove_roster_item(session.bare, contact)
    if old is None:
        raise StanzaError(Condition.ITEM_NOT_FOUND, f"{contact} is not on the roster")
    await ctx.notify(RosterItemChanged(session.bare, contact))
    if old.subscription.has_to or old.pending_out:
        await ctx.deliver(presence(PresenceType.UNSUBSCRIBE, session.bare, contact))
    if old.subscription.has_from or old.pending_in:
        if old.subscription.has_from:  # §3.2.2: the contact sees us go
            for resource in ctx.sessions.available(session.bare):
                await ctx.deliver(presence(PresenceType.UNAVAILABLE, resource.jid, contact))
        await ctx.deliver(presence(PresenceType.UNSUBSCRIBED, session.bare, contact))


async def roster_get(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element | None:
    _check_own(session, iq)
    rows = await ctx.store.roster(session.bare)
    session.interested = True
    asked = iq[0].get("ver")
    query = ET.Element(QUERY)
    if asked is not None:
        session.roster_versioning = True
        version = roster_version(rows)
        if asked == version:
            return None  # §2.6.3: unchanged; the client keeps its copy
        query.set("ver", version)
    for row in rows:
        query.append(item_element(row.contact, row))
    return query


async def roster_set(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    _check_own(session, iq)
    item = _single_item(iq[0])
    contact = _contact(item)
    if item.get("subscription") == "remove":
        await _remove(ctx, session, contact)
        return
    name, groups = _name_and_groups(item)
    try:
        await ctx.store.set_roster_item(session.bare, contact, name, groups)
    except QuotaExceeded as exc:
        raise exc.stanza_error() from None
    await ctx.notify(RosterItemChanged(session.bare, contact))
    return


async def push_item(ctx: FeatureContext, event: RosterItemChanged) -> None:
    """Send the item as stored now to each interested resource (§2.1.6)."""
    targets = [session for session in ctx.sessions.active(event.user) if session.interested]
    if not targets:
        return
    version = None
    if any(session.roster_versioning for session in targets):
        rows = await ctx.store.roster(event.user)
        row = next((r for r in rows if r.contact == str(event.contact.bare)), None)
        version = roster_version(rows)
    else:
        row = await ctx.store.roster_item(event.user, event.contact)
    for session in targets:
        push = ET.Element("iq", {"type": "set", "id": f"push-{uuid.uuid4().hex[:12]}", "to": str(session.jid)})
        attrs = {"ver": version} if version is not None and session.roster_versioning else {}
        ET.SubElement(push, QUERY, attrs).append(item_element(str(event.contact), row))
        session.send(push)


def register(router: Router) -> None:
    router.iq(IqType.GET, QUERY)(roster_get)
    router.iq(IqType.SET, QUERY)(roster_set)
    router.observe(RosterItemChanged)(push_item)
