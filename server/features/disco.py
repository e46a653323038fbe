"""XEP-0030 Service Discovery: the server itself, and an account's bare JID.

Rules: `disco#info` to the server lists the identity server/im and every namespace
features put in `router.disco_features` (read at query time, so modules registered
later still show); the node `CAPS_NODE#ver` of the server's XEP-0115 capabilities
(`server.xmpp.caps`) answers the same, echoing the node. `disco#info` to an account's
bare JID (the user's own or another's, answered by the node serving it) lists the
identity account/registered plus what features put in `router.account_identities`
and `router.account_features`; an address that is no account gets
`service-unavailable`. `disco#items` lists nothing: this product has no components,
and an account publishes no items. Any other `node` names nothing we know:
`item-not-found` (XEP-0030 §3.1).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp import caps
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import NS_DISCO_INFO, NS_DISCO_ITEMS, IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

INFO = f"{{{NS_DISCO_INFO}}}query"
ITEMS = f"{{{NS_DISCO_ITEMS}}}query"
IDENTITY = {"category": caps.SERVER_IDENTITY.category, "type": caps.SERVER_IDENTITY.type,
            "name": caps.SERVER_IDENTITY.name}
ACCOUNT_IDENTITY = ("account", "registered")  # XEP-0030 registry: a registered account


def _check_node(iq: ET.Element, allowed: str | None = None) -> str | None:
    node = iq[0].get("node")
    if node and node != allowed:
        raise StanzaError(Condition.ITEM_NOT_FOUND, "no such node")
    return node


def _query(tag: str, node: str | None) -> ET.Element:
    return ET.Element(tag, {"node": node} if node else {})


def server_caps_node(ctx: FeatureContext) -> str:
    return f"{caps.NODE}#{caps.ver([caps.SERVER_IDENTITY], ctx.router.disco_features)}"


async def info(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    query = _query(INFO, _check_node(iq, server_caps_node(ctx)))
    ET.SubElement(query, f"{{{NS_DISCO_INFO}}}identity", IDENTITY)
    for var in sorted(ctx.router.disco_features):
        ET.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", {"var": var})
    return query


async def items(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_node(iq)
    return ET.Element(ITEMS)


async def _check_account(ctx: FeatureContext, account: JID, iq: ET.Element) -> None:
    _check_node(iq)
    if not await ctx.store.user_exists(account):
        raise StanzaError(Condition.SERVICE_UNAVAILABLE)


async def account_info(ctx: FeatureContext, account: JID, iq: ET.Element) -> ET.Element:
    await _check_account(ctx, account, iq)
    query = ET.Element(INFO)
    for category, type_ in sorted(ctx.router.account_identities):
        ET.SubElement(query, f"{{{NS_DISCO_INFO}}}identity", {"category": category, "type": type_})
    for var in sorted(ctx.router.account_features):
        ET.SubElement(query, f"{{{NS_DISCO_INFO}}}feature", {"var": var})
    return query


async def account_items(ctx: FeatureContext, account: JID, iq: ET.Element) -> ET.Element:
    await _check_account(ctx, account, iq)
    return ET.Element(ITEMS)


def register(router: Router) -> None:
    router.iq(IqType.GET, INFO)(info)
    router.iq(IqType.GET, ITEMS)(items)
    router.account_iq(IqType.GET, INFO)(account_info)
    router.account_iq(IqType.GET, ITEMS)(account_items)
    router.disco_features.update({NS_DISCO_INFO, NS_DISCO_ITEMS})
    router.account_identities.add(ACCOUNT_IDENTITY)
    router.account_features.update({NS_DISCO_INFO, NS_DISCO_ITEMS})
