"""Presence subscriptions (RFC 6121 §3): the adapter around `subscription_rules`.

Rules of this module:
- Every subscription stanza is processed twice, as in the RFC: outbound for the
  sender's roster (route from a local client), inbound for the recipient's roster
  (delivery to an account of our domain). Both sides live in the shared database, so
  the recipient's state is updated whichever node it is served by.
- The pure table decides; this module executes its effects in order: database write
  (one transaction in `ctx.store.update_subscription`), then roster pushes, then
  stanzas. Outbound stanzas are stamped with the user's bare JID and addressed to
  the contact's bare JID (§3.1.2).
- Presence sent on the user's behalf when a subscription is granted or revoked comes
  from the shared presence records, so it is right even if the user is on another node.
- Requests to accounts that do not exist are answered "unsubscribed" (§3.1.3). For an
  account of our domain that does not exist the user's side keeps no state either: the
  request (or pre-approval) writes nothing, and the requesting resource gets the
  "unsubscribed" at once, so a script cannot fill the database with items for made-up
  JIDs. A subscription to one's own JID is implicit and ignored.
- Quotas (`server.quotas`): a change that needs a new roster item when the roster is
  full, or a new pending request when too many wait, changes nothing and bounces
  with the quota's error (`not-allowed`, `resource-constraint`) to the stanza's sender.
- Unanswered inbound requests are stored and delivered again each time the user sends
  initial presence (`SessionAvailable`) until answered (§3.1.3).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import TYPE_CHECKING

from presence_ha.server.features.subscription_rules import Decision, Effect, Kind, State, Way, decide
from presence_ha.server.quotas import QuotaExceeded
from presence_ha.server.router import Direction, RosterItemChanged, Router, SessionAvailable, StanzaKind
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import PresenceType, presence, readdressed

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.store import SubscriptionState

SUBSCRIPTION_TYPES = tuple(kind.value for kind in Kind)  # route keys: `type` attribute values
_ADDING = (Kind.SUBSCRIBE, Kind.SUBSCRIBED)  # outbound kinds that may add state (a request, a pre-approval)


async def _transition(
    ctx: FeatureContext, user: JID, contact: JID, way: Way, kind: Kind, request: ET.Element | None = None
) -> Decision:
    """Run the table on the stored state and write the outcome atomically."""
    decisions: list[Decision] = []

    def change(old: SubscriptionState) -> SubscriptionState:
        decision = decide(way, kind, State(old.subscription, old.pending_out, old.pending_in), old.approved)
        decisions.append(decision)
        new = decision.state
        return replace(
            old, subscription=new.sub, pending_out=new.pending_out, pending_in=new.pending_in,
            approved=decision.approved,
        )

    try:
        await ctx.store.update_subscription(user, contact, change, request)
    except QuotaExceeded as exc:
        raise exc.stanza_error() from None
    return decisions[-1]


async def _send_presence(ctx: FeatureContext, user: JID, contact: JID, available: bool) -> None:
    """The user's current presence (or its end) from each resource, to the contact."""
    for record in await ctx.store.presences(user):
        sender = user.with_resource(record.resource)
        if available:
            await ctx.deliver(readdressed(record.stanza, contact, sender))
        else:
            await ctx.deliver(presence(PresenceType.UNAVAILABLE, sender, contact))


async def _presence_effects(ctx: FeatureContext, user: JID, contact: JID, decision: Decision) -> None:
    if Effect.SEND_PRESENCE in decision.effects:
        await _send_presence(ctx, user, contact, available=True)
    if Effect.SEND_UNAVAILABLE in decision.effects:
        await _send_presence(ctx, user, contact, available=False)


async def outbound(ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
    """A local user sent subscribe/subscribed/unsubscribe/unsubscribed (Appendix A.2)."""
    if not stanza.get("to"):
        raise StanzaError(Condition.BAD_REQUEST, "a subscription stanza needs a 'to'")
    user, contact = session.bare, JID.parse(stanza.get("to", "")).bare
    if contact == user:
        return
    kind = Kind(stanza.get("type"))
    if kind in _ADDING and contact.domain == ctx.domain and not await ctx.store.user_exists(contact):
        if kind is Kind.SUBSCRIBE:  # answered on the missing contact's behalf (§3.1.3)
            session.send(presence(PresenceType.UNSUBSCRIBED, contact, user))
        return
    decision = await _transition(ctx, user, contact, Way.OUTBOUND, kind)
    if Effect.PUSH in decision.effects:
        await ctx.notify(RosterItemChanged(user, contact))
    if Effect.ROUTE in decision.effects:
        await ctx.deliver(readdressed(stanza, contact, user), sender=session)
    await _presence_effects(ctx, user, contact, decision)


async def inbound(ctx: FeatureContext, sender: Session | None, stanza: ET.Element) -> None:
    """A subscription stanza for an account of our domain (Appendix A.3)."""
    if not stanza.get("from"):
        return
    user, contact = JID.parse(stanza.get("to", "")).bare, JID.parse(stanza.get("from", "")).bare
    kind = Kind(stanza.get("type"))
    if user == contact:
        return
    if not await ctx.store.user_exists(user):
        if kind is Kind.SUBSCRIBE:
            await ctx.deliver(presence(PresenceType.UNSUBSCRIBED, user, contact))
        return
    request = readdressed(stanza, user, contact)
    decision = await _transition(ctx, user, contact, Way.INBOUND, kind, request)
    if Effect.PUSH in decision.effects:
        await ctx.notify(RosterItemChanged(user, contact))
    if Effect.ROUTE in decision.effects:
        for session in ctx.sessions.available(user):
            session.send(request)
    if Effect.AUTO_SUBSCRIBED in decision.effects:
        await ctx.deliver(presence(PresenceType.SUBSCRIBED, user, contact))
    await _presence_effects(ctx, user, contact, decision)


async def deliver_pending(ctx: FeatureContext, event: SessionAvailable) -> None:
    """§3.1.3: unanswered requests again at each initial presence."""
    for request in await ctx.store.pending_requests(event.session.bare):
        event.session.send(request)


def register(router: Router) -> None:
    router.stanza(StanzaKind.PRESENCE, Direction.OUT, SUBSCRIPTION_TYPES)(outbound)
    router.stanza(StanzaKind.PRESENCE, Direction.IN, SUBSCRIPTION_TYPES)(inbound)
    router.observe(SessionAvailable)(deliver_pending)
