"""XEP-0092 Software Version of the server: name and version, no OS (privacy, §4)."""

from __future__ import annotations

import importlib.metadata
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.stanzas import NS_VERSION, IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

QUERY = f"{{{NS_VERSION}}}query"


def software_version() -> str:
    try:
        return importlib.metadata.version("presence-ha")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


async def version(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    query = ET.Element(QUERY)
    ET.SubElement(query, f"{{{NS_VERSION}}}name").text = "presence-ha"
    ET.SubElement(query, f"{{{NS_VERSION}}}version").text = software_version()
    return query


def register(router: Router) -> None:
    router.iq(IqType.GET, QUERY)(version)
    router.disco_features.add(NS_VERSION)
