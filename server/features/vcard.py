"""XEP-0054 vcard-temp (with XEP-0153 avatars): each user's vCard in the database.

Rules of this module:
- A set (`<iq type='set'><vCard xmlns='vcard-temp'/></iq>`, no `to` or the user's own
  bare JID) replaces the user's whole vCard (§3.2); anything else addressed elsewhere
  is `forbidden`. It must stay under `MAX_VCARD_BYTES` serialized (not-acceptable).
- A get to a bare account JID (the user's own or anyone's: vCards are public, §3.1)
  is answered on the account's behalf by the node serving it (`account_iq`), from
  the database; an account without a vCard gets an empty `<vCard/>` (§3.1), an
  address that is no account `service-unavailable`. A get without `to` is the
  user's own vCard; to the server, the server's (empty).
- XEP-0153 avatars: a PHOTO's BINVAL must be base64 (`bad-request` otherwise), so
  that every reader can hash it (`photo_hash`, §4.2). Clients advertise that hash in
  their presence (`<x xmlns='vcard-temp:x:update'/>`), which the server passes on
  unchanged; a vCard get returns the photo as stored, on any node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.store import UnknownUser
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import IqType, serialize

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

NS_VCARD = "vcard-temp"
VCARD = f"{{{NS_VCARD}}}vCard"
BINVAL = f"{{{NS_VCARD}}}PHOTO/{{{NS_VCARD}}}BINVAL"
MAX_VCARD_BYTES = 192 * 1024  # under the stanza limit (256 KiB) with room for the IQ


def photo_hash(vcard: ET.Element) -> str | None:
    """XEP-0153 §4.2: hex SHA-1 of the decoded PHOTO BINVAL; None without a photo."""
    text = vcard.findtext(BINVAL)
    if not text or not text.strip():
        return None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error as exc:
        raise StanzaError(Condition.BAD_REQUEST, "the PHOTO BINVAL is not base64") from exc
    return hashlib.sha1(data).hexdigest()


async def _vcard_of(ctx: FeatureContext, user: JID) -> ET.Element:
    try:
        stored = await ctx.store.vcard(user)
    except UnknownUser as exc:
        raise StanzaError(Condition.SERVICE_UNAVAILABLE) from exc
    return stored if stored is not None else ET.Element(VCARD)


async def get_account(ctx: FeatureContext, account: JID, iq: ET.Element) -> ET.Element:
    return await _vcard_of(ctx, account)


async def get_own(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    if iq.get("to"):  # the server's own vCard: it has none to tell
        return ET.Element(VCARD)
    return await _vcard_of(ctx, session.bare)


async def set_own(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    to = iq.get("to")
    if to and JID.parse(to) != session.bare:
        raise StanzaError(Condition.FORBIDDEN, "only your own vCard can be set")
    vcard = iq[0]
    if len(serialize(vcard).encode()) > MAX_VCARD_BYTES:
        raise StanzaError(Condition.NOT_ACCEPTABLE, f"a vCard is at most {MAX_VCARD_BYTES} bytes")
    photo_hash(vcard)  # checks the BINVAL
    await ctx.store.set_vcard(session.bare, vcard)


def register(router: Router) -> None:
    router.iq(IqType.GET, VCARD)(get_own)
    router.iq(IqType.SET, VCARD)(set_own)
    router.account_iq(IqType.GET, VCARD)(get_account)
    router.disco_features.add(NS_VCARD)
    router.account_features.add(NS_VCARD)
