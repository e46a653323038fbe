"""XEP-0012 Last Activity: a user's last logout, and the server's uptime.

Rules of this module:
- When a user's last available resource goes unavailable (`ResourceUnavailable`, on
  the node serving the user), the time and the status text of that unavailable
  presence are written to the database (one upsert): any node answers from it,
  after a failover too.
- A query to a bare account JID (§5) is answered on the account's behalf by the node
  serving it: to the user itself or a contact the user lets see its presence
  (subscription from/both), seconds since the last logout and its status, or 0 while
  the user has an available resource; to anyone else `forbidden`; for an account
  that never logged out `item-not-found`; for no account `service-unavailable`.
- A query to the server (§6) is the time since this node started (its uptime).
"""

from __future__ import annotations

import datetime as dt
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.presence_service import SEE_ME
from presence_ha.server.router import ResourceUnavailable, Router
from presence_ha.server.sessions import Session
from presence_ha.server.store import UnknownUser
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

NS_LAST = "jabber:iq:last"
QUERY = f"{{{NS_LAST}}}query"


def answer(seconds: int, status: str = "") -> ET.Element:
    query = ET.Element(QUERY, {"seconds": str(max(0, seconds))})
    query.text = status or None
    return query


async def _may_see(ctx: FeatureContext, account: JID, requester: JID) -> bool:
    return requester.bare == account or await ctx.store.subscription_of(account, requester.bare) in SEE_ME


async def account_last(ctx: FeatureContext, account: JID, iq: ET.Element) -> ET.Element:
    if not await ctx.store.user_exists(account):
        raise StanzaError(Condition.SERVICE_UNAVAILABLE)
    if not await _may_see(ctx, account, JID.parse(iq.get("from", ""))):
        raise StanzaError(Condition.FORBIDDEN, "only contacts who see the user's presence may ask")
    if ctx.sessions.available(account):
        return answer(0)
    try:
        last = await ctx.store.last_logout(account)
    except UnknownUser as exc:
        raise StanzaError(Condition.SERVICE_UNAVAILABLE) from exc
    if last is None:
        raise StanzaError(Condition.ITEM_NOT_FOUND, "the user has not logged out yet")
    at, status = last
    return answer(int((dt.datetime.now(dt.UTC) - at).total_seconds()), status)


async def record_logout(ctx: FeatureContext, event: ResourceUnavailable) -> None:
    """The user's last available resource went: remember when, and its status."""
    user = event.session.bare
    if ctx.sessions.available(user):
        return
    status = (event.stanza.findtext("status") or "").strip()
    await ctx.store.record_logout(user, dt.datetime.now(dt.UTC), status[:1023])


def register(router: Router) -> None:
    started = time.monotonic()

    async def uptime(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
        return answer(int(time.monotonic() - started))

    router.iq(IqType.GET, QUERY)(uptime)
    router.account_iq(IqType.GET, QUERY)(account_last)
    router.observe(ResourceUnavailable)(record_logout)
    router.disco_features.add(NS_LAST)
    router.account_features.add(NS_LAST)
