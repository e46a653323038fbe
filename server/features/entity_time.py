"""XEP-0202 Entity Time of the server: UTC, offset +00:00 (nodes run on UTC time)."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.stanzas import IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

NS_TIME = "urn:xmpp:time"
TIME = f"{{{NS_TIME}}}time"


def time_element(now: dt.datetime) -> ET.Element:
    """§3: `<tzo/>` and `<utc/>` (XEP-0082 DateTime in UTC with its `Z`, whole seconds)."""
    element = ET.Element(TIME)
    ET.SubElement(element, f"{{{NS_TIME}}}tzo").text = "+00:00"
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ET.SubElement(element, f"{{{NS_TIME}}}utc").text = stamp
    return element


async def entity_time(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    return time_element(dt.datetime.now(dt.UTC))


def register(router: Router) -> None:
    router.iq(IqType.GET, TIME)(entity_time)
    router.disco_features.add(NS_TIME)
