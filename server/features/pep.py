"""Personal Eventing Protocol (XEP-0163) on the account's bare JID, with the XEP-0060
subset clients use: publish (with publish-options, XEP-0222/0223), retract, items.

Rules of this module:
- Each account is a virtual pubsub service: IQs with no `to` or to the account's bare
  JID. Only the owner publishes or retracts (forbidden otherwise); a node is made by
  its first publish (auto-create), configured by that publish's options.
- Reads follow the node's access model (`server.pubsub.may_read`): a refusal is
  XEP-0060 §6.5.9's error; an unknown account or node is item-not-found.
- Notifications (XEP-0163 §4.3.1) go to every available resource, on any node, of
  the owner and of each contact the model lets read (subscription from/both; the
  owner alone for whitelist), whose caps (`server.entity_caps`) carry `node+notify`.
  The resources and caps come from the shared presence records, and the messages are
  delivered through the router, so a contact on another node gets them there.
- When a resource sends presence with caps it had not announced (initial presence or a
  new hash), it gets the last item of each node it wants (+notify) of its own account
  and of every contact it is subscribed to (§4.3.2, send_last_published_item).
- All state is in the availability database (`ctx.store.pep`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TYPE_CHECKING

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server import entity_caps
from presence_ha.server.pep_store import PreconditionNotMet
from presence_ha.server.presence_service import SEE_ME
from presence_ha.server.pubsub import (
    ACCOUNT_FEATURES,
    NS_DATA,
    NS_ERRORS,
    NS_PUBSUB,
    BadOptions,
    caps_of,
    event_message,
    may_read,
    notify_nodes,
    options_of,
    read_refusal,
)
from presence_ha.server.router import PresenceBroadcast, Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import IqType, Subscription

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

log = logging.getLogger(__name__)

PUBSUB = f"{{{NS_PUBSUB}}}pubsub"
SUBSCRIBED_TO = (Subscription.TO, Subscription.BOTH)
_background: set[asyncio.Task[None]] = set()  # caps questions in flight (entity_caps)


def _owner(ctx: FeatureContext, session: Session, iq: ET.Element) -> JID:
    to = iq.get("to")
    if not to:
        return session.bare
    owner = JID.parse(to)
    if owner.local is None:
        raise StanzaError(Condition.SERVICE_UNAVAILABLE, "no pubsub service at the domain: use PEP on your account")
    return owner.bare


def _one_child(iq: ET.Element, names: tuple[str, ...]) -> ET.Element:
    actions = [child for child in iq[0] if child.tag in {f"{{{NS_PUBSUB}}}{n}" for n in names}]
    if len(actions) != 1:
        raise StanzaError(Condition.BAD_REQUEST, f"expected one of {', '.join(names)}")
    return actions[0]


def _node(elem: ET.Element) -> str:
    node = elem.get("node")
    if not node:
        raise StanzaError(Condition.BAD_REQUEST, "a node is required", app_condition=f"{{{NS_ERRORS}}}nodeid-required")
    return node


def _publish_options(iq: ET.Element) -> dict[str, object]:
    wrapper = iq[0].find(f"{{{NS_PUBSUB}}}publish-options")
    try:
        return options_of(wrapper.find(f"{{{NS_DATA}}}x") if wrapper is not None else None)
    except BadOptions as exc:
        raise StanzaError(Condition.CONFLICT, str(exc), app_condition=f"{{{NS_ERRORS}}}precondition-not-met") from exc


async def pubsub_set(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element | None:
    owner = _owner(ctx, session, iq)
    if owner != session.bare:
        raise StanzaError(Condition.FORBIDDEN, "only the account itself publishes to its PEP nodes")
    action = _one_child(iq, ("publish", "retract"))
    if action.tag == f"{{{NS_PUBSUB}}}retract":
        await _retract(ctx, owner, action)
        return None
    return await _publish(ctx, owner, action, _publish_options(iq))


async def _publish(ctx: FeatureContext, owner: JID, publish: ET.Element, options: dict[str, object]) -> ET.Element:
    node = _node(publish)
    items = publish.findall(f"{{{NS_PUBSUB}}}item")
    if len(items) != 1 or len(items[0]) != 1:
        raise StanzaError(Condition.BAD_REQUEST, "publish one item with one payload",
                          app_condition=f"{{{NS_ERRORS}}}invalid-payload")
    item_id = items[0].get("id") or uuid.uuid4().hex
    payload = items[0][0]
    try:
        config = await ctx.store.pep.publish(owner, node, options, item_id, payload)
    except PreconditionNotMet as exc:
        raise StanzaError(Condition.CONFLICT, "the node exists with another configuration",
                          app_condition=f"{{{NS_ERRORS}}}precondition-not-met") from exc
    if config is None:
        raise StanzaError(Condition.ITEM_NOT_FOUND, f"{owner} is no account")
    await _notify(ctx, owner, node, config.access_model,
                  lambda to: event_message(owner, to, node, item_id, payload))
    answer = ET.Element(PUBSUB)
    ET.SubElement(ET.SubElement(answer, f"{{{NS_PUBSUB}}}publish", {"node": node}), f"{{{NS_PUBSUB}}}item",
                  {"id": item_id})
    return answer


async def _retract(ctx: FeatureContext, owner: JID, retract: ET.Element) -> None:
    node = _node(retract)
    items = retract.findall(f"{{{NS_PUBSUB}}}item")
    if len(items) != 1 or not items[0].get("id"):
        raise StanzaError(Condition.BAD_REQUEST, "retract one item by id",
                          app_condition=f"{{{NS_ERRORS}}}item-required")
    item_id = items[0].get("id", "")
    found = await ctx.store.pep.retract(owner, node, item_id)
    if not found:
        raise StanzaError(Condition.ITEM_NOT_FOUND, f"no item {item_id} in node {node}")
    if retract.get("notify") in ("1", "true"):
        result = await ctx.store.pep.items(owner, node, [], 0)
        access = result[0].access_model if result else "whitelist"
        await _notify(ctx, owner, node, access, lambda to: event_message(owner, to, node, item_id, None, retract=True))


async def _notify(ctx: FeatureContext, owner: JID, node: str, access_model: str,
                  message_for: Callable[[str], ET.Element]) -> None:
    """§4.3.1: to each available resource allowed to read that wants `node` (+notify)."""
    users = {owner.local} if owner.local else set()
    if access_model != "whitelist":
        users.update(c.local for c in await ctx.store.contacts(owner, SEE_ME) if c.local and c.domain == ctx.domain)
    for (username, resource), record in (await ctx.store.presences_of(users)).items():
        key = caps_of(record.stanza)
        features = await ctx.store.pep.caps_features(key) if key else None
        if features and node in notify_nodes(features):
            await ctx.deliver(message_for(f"{username}@{ctx.domain}/{resource}"))


async def pubsub_get(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    owner = _owner(ctx, session, iq)
    request = _one_child(iq, ("items",))
    node = _node(request)
    wanted = [i.get("id", "") for i in request.findall(f"{{{NS_PUBSUB}}}item") if i.get("id")]
    max_text = request.get("max_items")
    max_items = int(max_text) if max_text and max_text.isdigit() else None
    found = await ctx.store.pep.items(owner, node, wanted, max_items)
    if found is None:
        raise StanzaError(Condition.ITEM_NOT_FOUND, f"no node {node} at {owner}")
    config, items = found
    subscription = await ctx.store.subscription_of(owner, session.bare) if owner != session.bare else None
    if not may_read(config.access_model, owner, session.bare, subscription):
        condition, app = read_refusal(config.access_model)
        raise StanzaError(Condition.NOT_AUTHORIZED if condition == "not-authorized" else Condition.NOT_ALLOWED,
                          app_condition=f"{{{NS_ERRORS}}}{app}")
    answer = ET.Element(PUBSUB)
    listing = ET.SubElement(answer, f"{{{NS_PUBSUB}}}items", {"node": node})
    for item in reversed(items):  # oldest first, as clients show them
        ET.SubElement(listing, f"{{{NS_PUBSUB}}}item", {"id": item.item_id}).append(ET.fromstring(item.payload))
    return answer


async def presence_broadcast(ctx: FeatureContext, event: PresenceBroadcast) -> None:
    """A resource announced caps: learn them (in a task: see entity_caps), then §4.3.2."""
    session = event.session
    key = caps_of(session.presence) if session.presence is not None else None
    if key is None or (event.previous is not None and caps_of(event.previous) == key):
        return
    task = asyncio.get_running_loop().create_task(_send_last_items(ctx, session, key))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _send_last_items(ctx: FeatureContext, session: Session, key: str) -> None:
    try:
        features = await entity_caps.features_of(ctx, session, key)
        nodes = notify_nodes(features) if features else set()
        if not nodes or not session.available:
            return
        contacts = await ctx.store.contacts(session.bare, SUBSCRIBED_TO)
        for item, access in await ctx.store.pep.last_items([session.bare, *contacts], nodes):
            owner = JID(item.owner, ctx.domain)
            if access == "whitelist" and owner != session.bare:
                continue
            session.send(event_message(owner, str(session.jid), item.node, item.item_id, ET.fromstring(item.payload)))
    except DatabaseUnavailable as exc:
        log.warning("last PEP items for %s not sent: database unavailable: %s", session.jid, exc)


def register(router: Router) -> None:
    router.iq(IqType.SET, PUBSUB)(pubsub_set)
    router.iq(IqType.GET, PUBSUB)(pubsub_get)
    router.observe(PresenceBroadcast)(presence_broadcast)
    router.account_identities.add(("pubsub", "pep"))
    router.account_features.update(ACCOUNT_FEATURES)
    router.account_features.add(NS_PUBSUB)
