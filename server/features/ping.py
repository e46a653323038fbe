"""XEP-0199 XMPP Ping: the server answers `<ping/>` addressed to it with an empty result.

Rules: an IQ get with `{urn:xmpp:ping}ping` to the server (or no `to`) is answered by
the router with `<iq type='result'/>`; pings to a user are routed like any IQ.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.stanzas import NS_PING, IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

PING = f"{{{NS_PING}}}ping"


async def pong(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    return None  # an empty result is the answer (XEP-0199 §4.2)


def register(router: Router) -> None:
    router.iq(IqType.GET, PING)(pong)
    router.disco_features.add(NS_PING)
