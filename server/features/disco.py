"""XEP-0030 Service Discovery of the server itself: info and (empty) items.

Rules: `disco#info` to the server lists the identity server/im and every namespace
features put in `router.disco_features` (read at query time, so modules registered
later still show). `disco#items` lists nothing: this product has no components.
A `node` attribute names nothing we know: `item-not-found` (XEP-0030 §3.1).
disco#info to an account's bare JID is answered by the server for the account (RFC 6120
§10.5.3.2) from the account registries `router.account_identities` and
`router.account_features` (XEP-0163 §6: pubsub/pep); no such account:
service-unavailable (§10.5.3.1).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import NS_DISCO_INFO, NS_DISCO_ITEMS, IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

INFO = f"{{{NS_DISCO_INFO}}}query"
ITEMS = f"{{{NS_DISCO_ITEMS}}}query"
IDENTITY = {"category": "server", "type": "im", "name": "presence-ha"}


def _check_node(iq: ET.Element) -> None:
    if iq[0].get("node"):
        raise StanzaError(Condition.ITEM_NOT_FOUND, "no such node")


def _account(ctx: FeatureContext, iq: ET.Element) -> JID | None:
    """The account whose bare JID the query is addressed to; None: the server."""
    text = iq.get("to")
    to = JID.parse(text) if text else None
    return to if to is not None and to.local is not None else None


async def _account_info(ctx: FeatureContext, account: JID) -> ET.Element:
    if not await ctx.store.user_exists(account):
        raise StanzaError(Condition.SERVICE_UNAVAILABLE)
    query = ET.Element(INFO)
    for category, kind in sorted(ctx.router.account_identities):
        ET.SubElement(query, f"{{{NS_DISCO_INFO}}}identity", {"category": category, "type": kind})
    for var in sorted(ctx.router.account_features | {NS_DISCO_INFO}):
        ET.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", {"var": var})
    return query


async def info(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_node(iq)
    account = _account(ctx, iq)
    if account is not None:
        return await _account_info(ctx, account)
    query = ET.Element(INFO)
    ET.SubElement(query, f"{{{NS_DISCO_INFO}}}identity", IDENTITY)
    for var in sorted(ctx.router.disco_features):
        ET.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", {"var": var})
    return query


async def items(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_node(iq)
    return ET.Element(ITEMS)


def register(router: Router) -> None:
    router.iq(IqType.GET, INFO)(info)
    router.iq(IqType.GET, ITEMS)(items)
    router.disco_features.update({NS_DISCO_INFO, NS_DISCO_ITEMS})
