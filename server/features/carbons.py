"""Message Carbons (XEP-0280, urn:xmpp:carbons:2).

Rules of this module:
- A session opts in and out with <enable/> / <disable/> IQ sets; the namespace is
  advertised in disco (§3, §4).
- Eligible messages (§6): type chat, or type normal with a body; never one carrying
  <private/> (§7), a <no-copy/> hint (XEP-0334), or that is itself a carbon.
- Received copies (§6.1): when a message was handed to some resources of its recipient,
  every other active carbons-enabled resource of that account gets a <received/>
  copy. Sent copies (§6.2): every other active carbons-enabled resource of the sender
  gets a <sent/> copy. Copies come from the account's bare JID.
- Carbons add no state beyond the session flag, so failover time does not depend on
  them (SPEC §9).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import MessageDelivered, MessageSent, Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import IqType, MessageType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
ENABLE = f"{{{NS_CARBONS}}}enable"
DISABLE = f"{{{NS_CARBONS}}}disable"
PRIVATE = f"{{{NS_CARBONS}}}private"
RECEIVED = f"{{{NS_CARBONS}}}received"
SENT = f"{{{NS_CARBONS}}}sent"
NO_COPY = "{urn:xmpp:hints}no-copy"


def eligible(stanza: ET.Element) -> bool:
    if any(stanza.find(tag) is not None for tag in (PRIVATE, NO_COPY, RECEIVED, SENT)):
        return False
    kind = MessageType.of(stanza)  # an unknown type is never eligible
    return kind is MessageType.CHAT or (kind is MessageType.NORMAL and stanza.find("body") is not None)


def _carbon(direction: str, account: JID, to: Session, original: ET.Element) -> ET.Element:
    wrapper = ET.Element("message", {"from": str(account), "to": str(to.jid), "type": original.get("type") or "normal"})
    forwarded = ET.SubElement(ET.SubElement(wrapper, direction), f"{{{NS_FORWARD}}}forwarded")
    forwarded.append(original)
    return wrapper


def _wanting(ctx: FeatureContext, account: JID, skip: set[int]) -> list[Session]:
    """The account's other active resources that enabled carbons (usually none)."""
    return [s for s in ctx.sessions.active(account) if s.carbons and id(s) not in skip]


def _copy_to(sessions: list[Session], account: JID, direction: str, original: ET.Element) -> None:
    for session in sessions:
        session.send(_carbon(direction, account, session, original))


async def enable(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    session.carbons = True


async def disable(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    session.carbons = False


async def copy_received(ctx: FeatureContext, event: MessageDelivered) -> None:
    if not event.recipients:
        return
    account = event.recipients[0].bare
    wanting = _wanting(ctx, account, {id(s) for s in event.recipients})
    if wanting and eligible(event.stanza):  # who wants a copy first: it is cheaper to ask
        _copy_to(wanting, account, RECEIVED, event.stanza)


async def copy_sent(ctx: FeatureContext, event: MessageSent) -> None:
    account = event.session.bare
    wanting = _wanting(ctx, account, {id(event.session)})
    if wanting and eligible(event.stanza):
        _copy_to(wanting, account, SENT, event.stanza)


def register(router: Router) -> None:
    router.iq(IqType.SET, ENABLE)(enable)
    router.iq(IqType.SET, DISABLE)(disable)
    router.observe(MessageDelivered)(copy_received)
    router.observe(MessageSent)(copy_sent)
    router.disco_features.add(NS_CARBONS)
