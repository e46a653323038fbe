"""XEP-0030 Service Discovery of the server itself: info and (empty) items.

Rules: `disco#info` to the server lists the identity server/im and every namespace
features put in `router.disco_features` (read at query time, so modules registered
later still show). `disco#items` lists nothing: this product has no components.
A `node` attribute names nothing we know: `item-not-found` (XEP-0030 §3.1).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.stanzas import NS_DISCO_INFO, NS_DISCO_ITEMS, IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

INFO = f"{{{NS_DISCO_INFO}}}query"
ITEMS = f"{{{NS_DISCO_ITEMS}}}query"
IDENTITY = {"category": "server", "type": "im", "name": "presence-ha"}


def _check_node(iq: ET.Element) -> None:
    if iq[0].get("node"):
        raise StanzaError(Condition.ITEM_NOT_FOUND, "no such node")


async def info(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    _check_node(iq)
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
