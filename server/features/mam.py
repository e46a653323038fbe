"""Message Archive Management (XEP-0313, urn:xmpp:mam:2) for one-to-one chat.

Rules of this module:
- A query (IQ set) reads the user's own archive only (`to` absent or the user's bare
  JID; another account's archive is forbidden). Each matching message goes to the
  querying resource as a <result/> message, then the IQ result carries <fin/> with
  the RSM page (`server.mam_forms`). A malformed query is bad-request; an RSM id not
  in the archive is item-not-found (XEP-0059 §2.6).
- Preferences (§6): get returns them (the default, always, if never set); set stores
  and returns them. Archiving itself happens as messages are sent (`server.archiving`).
- The archive lives in the availability database (`ctx.store.archive`): it survives
  failover, fallback and user moves and reads the same on every node.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.archive_store import UnknownAnchor
from presence_ha.server.mam_forms import (
    NS_MAM,
    NS_SID,
    BadQuery,
    fin,
    prefs_element,
    prefs_of,
    query_of,
    result_message,
)
from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

QUERY = f"{{{NS_MAM}}}query"
PREFS = f"{{{NS_MAM}}}prefs"


def _check_own(session: Session, iq: ET.Element) -> None:
    to = iq.get("to")
    if to and JID.parse(to) not in (session.bare, JID(None, session.jid.domain)):
        raise StanzaError(Condition.FORBIDDEN, "only your own archive can be read")


async def query(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_own(session, iq)
    try:
        wanted = query_of(iq[0])
    except BadQuery as exc:
        raise StanzaError(Condition.BAD_REQUEST, str(exc)) from exc
    try:
        page = await ctx.store.archive.page(session.bare, wanted)
    except UnknownAnchor as exc:
        raise StanzaError(Condition.ITEM_NOT_FOUND, f"no message {exc} in the archive") from exc
    if page is None:
        raise StanzaError(Condition.ITEM_NOT_FOUND, "no archive")
    query_id, to, owner = iq[0].get("queryid"), str(session.jid), str(session.bare)
    for row in page.rows:
        session.send(result_message(to, owner, query_id, row.stanza_id, row.stamp, ET.fromstring(row.stanza)))
    return fin(page)


async def prefs_get(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_own(session, iq)
    found = await ctx.store.archive.prefs(session.bare)
    if found is None:
        raise StanzaError(Condition.ITEM_NOT_FOUND, "no archive")
    return prefs_element(found)


async def prefs_set(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_own(session, iq)
    try:
        wanted = prefs_of(iq[0])
    except BadQuery as exc:
        raise StanzaError(Condition.BAD_REQUEST, str(exc)) from exc
    if not await ctx.store.archive.set_prefs(session.bare, wanted):
        raise StanzaError(Condition.ITEM_NOT_FOUND, "no archive")
    return prefs_element(wanted)


def register(router: Router) -> None:
    router.iq(IqType.SET, QUERY)(query)
    router.iq(IqType.GET, PREFS)(prefs_get)
    router.iq(IqType.SET, PREFS)(prefs_set)
    router.account_features.update({NS_MAM, NS_SID})
    router.disco_features.add(NS_SID)
