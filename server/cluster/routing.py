"""Stanzas for accounts served by another node: out over the link, in through the router.

Rules of this module:
- `ClusterRoute` is the router's remote-route hook (`server.router.RemoteRoute`): for
  an account whose active node is another node it sends the stanza there and says
  "taken"; for an account served here, by nobody, or unknown, it says "not mine" and
  the router delivers locally.
- A peer that is unreachable (no link either way for more than `grace_s`) gets nothing
  new: the stanza is handled here as for an account with no available resource,
  which the shared database makes right: chat/normal messages go to offline storage,
  subscriptions and probes are answered from the shared records, presence has
  nobody to show, and an IQ get/set is bounced with `recipient-unavailable` (the
  account's server is in maintenance, RFC 6120 §8.3.3.13). During the grace, and
  for whatever was queued before, the link delivers exactly once when it is back.
- Received routed stanzas are delivered here with the full local rules and never
  forwarded again (no loops between nodes whose caches disagree); their `from`
  must be of the cluster's domain.
- What a received frame becomes is decided once, by `server.cluster.triage`.
- A received routed frame waits in the inbox as bytes and is parsed when its turn
  comes (`ClusterService._routed_later`): parsed stanzas waiting in a queue
  outlive the young GC generations, and the full collections they then cause cost
  a receiving node as much as all the parsing.
- A routed frame whose turn is now (nothing queued for its recipient) is parsed at
  once, and a plain message or a presence broadcast is delivered without the router
  (`deliver_routed_now`): its body goes to the client as the peer serialized it.
- Back-pressure (a full link window) makes only a client's own stanzas wait (`sender`
  set: its connection stops reading). What the server makes by itself (`sender`
  None: probe answers, presence and errors caused by a routed stanza, takeover
  re-routing) is queued without waiting: a peer acknowledges a routed stanza once
  it is delivered, so two nodes whose deliveries each waited for the other's window
  would stop for ever (seen at 3,000 users logging in: every probe answered across
  the link). That queue is bounded (`PeerChannel.max_backlog`); beyond it a stanza
  is handled as for an unreachable peer, and logged.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Protocol

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server import messaging, presence_service
from presence_ha.server.cluster import wire
from presence_ha.server.cluster.links import LinkMesh
from presence_ha.server.cluster.locations import MISS, LocationCache
from presence_ha.server.link import Kind
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID, InvalidJid

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.sessions import Session

log = logging.getLogger(__name__)


class Arrival(Protocol):
    """Users moved here whose sessions are not active yet (`server.cluster.arrivals`)."""

    def pending(self) -> asyncio.Future[None] | None: ...


class _NoArrival:
    def pending(self) -> asyncio.Future[None] | None:
        return None


NO_ARRIVAL = _NoArrival()


class ClusterRoute:
    def __init__(self, node: str, locations: LocationCache, mesh: LinkMesh, grace_s: float = 3.0,
                 arrival: Arrival = NO_ARRIVAL) -> None:
        self.node, self.locations, self.mesh, self.grace_s = node, locations, mesh, grace_s
        self.arrival = arrival
        self.routed = 0  # stanzas sent to another node
        self.unreachable = 0  # stanzas handled here because their node was unreachable
        self.overflowed = 0  # server-made stanzas handled here because the link's backlog was full

    async def route(self, ctx: FeatureContext, stanza: ET.Element, to: JID, sender: Session | None) -> bool:
        """True if `stanza` went to the node serving `to`; False: deliver it here."""
        if to.local is None:
            return False
        node = self.locations.cached(to.local)
        if node is MISS:
            try:
                node = await self.locations.active_node(to.local)
            except DatabaseUnavailable:
                if not ctx.sessions.active(to.bare):
                    raise
                # The database is away (a promotion) and the user is served here: deliver here,
                # do not drop a stanza the sender's stream already acknowledged (issue #17).
                log.info("location of %s unknown (database unavailable): active here, delivered here", to.bare)
                return False
        if node == self.node:
            await self._await_activation(ctx, to)
            return False
        if node is None:
            return False
        channel = self.mesh.channel(node)
        if channel is None:
            return False
        if not channel.up and self.mesh.unreachable_for(node) > self.grace_s:
            self.unreachable += 1
            log.info("node %s unreachable: %s for %s handled here", node, stanza.tag, to)
            if stanza.tag == "iq" and stanza.get("type") in ("get", "set"):
                raise StanzaError(Condition.RECIPIENT_UNAVAILABLE, f"the node serving {to.bare} is unreachable")
            return False
        payload = wire.encode_routed(stanza)
        if channel.try_send(Kind.STANZA, payload):
            pass
        elif sender is not None:
            await channel.send(Kind.STANZA, payload)  # the client's connection waits
        elif not channel.post(Kind.STANZA, payload):
            self.overflowed += 1
            log.warning("link to %s is full: %s for %s handled here", node, stanza.tag, to)
            if stanza.tag == "iq" and stanza.get("type") in ("get", "set"):
                raise StanzaError(Condition.RESOURCE_CONSTRAINT, f"the link to {to.bare}'s node is full")
            return False
        self.routed += 1
        return True


    async def _await_activation(self, ctx: FeatureContext, to: JID) -> None:
        """Users just moved here: a stanza for one whose sessions here are all inactive
        (backup connections the SRM is activating) waits for that, rather than going
        to offline storage a moment before its session turns active."""
        arrival = self.arrival.pending()
        if arrival is not None and not arrival.done() and ctx.sessions.only_inactive(to.bare):
            await asyncio.shield(arrival)


async def deliver_routed(ctx: FeatureContext, stanza: ET.Element) -> None:
    """A stanza a peer routed here: the local delivery rules, never forwarded again."""
    await ctx.router.deliver(ctx, stanza, route_remote=False)


def decode_routed(ctx: FeatureContext, peer: str, payload: bytes) -> ET.Element | None:
    """The stanza of a routed frame from `peer`; None (logged) for a bad frame."""
    try:
        frame = wire.decode_stanza(payload)
        if not isinstance(frame, wire.Routed):
            raise wire.WireError("not a routed stanza")
        wire.check_origin(frame.stanza, ctx.domain)
    except wire.WireError as exc:
        log.warning("dropped a frame from node %s: %s", peer, exc)
        return None
    return frame.stanza


def deliver_routed_now(ctx: FeatureContext, stanza: ET.Element, payload: bytes) -> bool:
    """`deliver_routed` at once for a routed message the common case covers
    (`messaging.deliver_now`) or a routed presence broadcast (`presence_service.deliver_now`), its
    frame's body written as it came (parsing it checked it); False: nothing was done,
    deliver it with `deliver_routed`."""
    tag = stanza.tag
    if tag == "presence" and stanza.get("type") not in presence_service.INBOUND_TYPES:
        return False  # probes and subscriptions
    if tag != "message" and tag != "presence":
        return False
    try:
        to = JID.parse(stanza.get("to") or "")
    except InvalidJid:
        return False
    if to.domain != ctx.domain or to.local is None:
        return False
    if not ctx.router.admits_now(ctx, stanza, to):
        return False  # blocked (XEP-0191), or the recipient's block list is not cached: the router's way
    body = wire.routed_body(payload)
    if body.find(b"xmlns", 0, body.find(b">")) >= 0:  # `serialize` never declares one there: an
        return False  # xmlns='' would take the stanza out of jabber:client in the client's stream
    if tag == "presence":
        presence_service.deliver_now(ctx, stanza, to, body)
        return True
    return messaging.deliver_now(ctx, stanza, to, body)
