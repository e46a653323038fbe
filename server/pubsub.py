"""PEP's pure rules (XEP-0060 subset, XEP-0163, XEP-0222/0223, XEP-0115): no I/O.

Rules of this module:
- Access models (XEP-0060 §4.5): `presence` (the default for PEP, XEP-0163 §4.2):
  the owner and contacts with a subscription from/both in the owner's roster;
  `open`: anyone; `whitelist`: the owner only (XEP-0223's private data).
- publish-options (XEP-0060 §7.1.5) are preconditions: `options_of` reads the
  fields we know into NodeConfig values (access_model, max_items, persist_items,
  send_last_published_item) and refuses values we do not support; unknown fields
  are ignored (clients send notify_* and such that change nothing here).
- The caps hash (XEP-0115 §5) is recomputed from the disco#info a client gives,
  so one client cannot poison the global cache for others.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import NS_DISCO_INFO, Subscription

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DATA = "jabber:x:data"
NS_CAPS = "http://jabber.org/protocol/caps"
PUBLISH_OPTIONS_FORM = "http://jabber.org/protocol/pubsub#publish-options"
ACCESS_MODELS = ("presence", "open", "whitelist")
MAX_ITEMS = 256  # "max" and anything above it

ACCOUNT_FEATURES = {
    f"{NS_PUBSUB}#{name}" for name in (
        "publish", "retract-items", "retrieve-items", "publish-options", "access-presence", "access-open",
        "access-whitelist", "auto-create", "auto-subscribe", "filtered-notifications", "last-published",
        "persistent-items", "item-ids", "multi-items",
    )
}


class BadOptions(ValueError):
    """publish-options we cannot honour (XEP-0060 §7.1.5: precondition-not-met)."""


def may_read(access_model: str, owner: JID, requester: JID, subscription: Subscription | None) -> bool:
    """May `requester` (a bare JID) read `owner`'s node? `subscription`: the requester's
    state in the owner's roster."""
    if requester == owner or access_model == "open":
        return True
    if access_model == "presence":
        return subscription is not None and subscription.has_from
    return False


def read_refusal(access_model: str) -> tuple[str, str]:
    """(RFC 6120 condition, pubsub#errors condition) for a refused read (XEP-0060 §6.5.9)."""
    if access_model == "presence":
        return "not-authorized", "presence-subscription-required"
    return "not-allowed", "closed-node"


def form_fields(form: ET.Element) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for field in form.findall(f"{{{NS_DATA}}}field"):
        var = field.get("var")
        if var:
            fields[var] = [v.text or "" for v in field.findall(f"{{{NS_DATA}}}value")]
    return fields


def _bool(text: str) -> bool:
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise BadOptions(f"not a boolean: {text!r}")


def options_of(form: ET.Element | None) -> dict[str, object]:
    """The NodeConfig values a publish-options form asks for; raises `BadOptions`."""
    if form is None:
        return {}
    fields = form_fields(form)
    form_type = (fields.get("FORM_TYPE") or [""])[0]
    if form_type and form_type != PUBLISH_OPTIONS_FORM:
        raise BadOptions(f"unknown FORM_TYPE {form_type}")
    options: dict[str, object] = {}
    for var, values in fields.items():
        value = values[0] if values else ""
        if var == "pubsub#access_model":
            if value not in ACCESS_MODELS:
                raise BadOptions(f"access model {value!r} is not supported")
            options["access_model"] = value
        elif var == "pubsub#max_items":
            options["max_items"] = MAX_ITEMS if value == "max" else _max_items(value)
        elif var == "pubsub#persist_items" and not _bool(value):
            raise BadOptions("PEP items are always persistent here")
        elif var == "pubsub#send_last_published_item":
            options["send_last"] = value != "never"
    return options


def _max_items(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise BadOptions(f"max_items must be a positive integer or 'max', not {text!r}")
    return min(int(text), MAX_ITEMS)


def caps_ver(query: ET.Element) -> str:
    """The XEP-0115 §5.1 SHA-1 verification string of a disco#info <query/>."""
    parts: list[str] = []
    identities = sorted(
        (i.get("category", ""), i.get("type", ""), i.get("{http://www.w3.org/XML/1998/namespace}lang", ""),
         i.get("name", ""))
        for i in query.findall(f"{{{NS_DISCO_INFO}}}identity")
    )
    parts.extend("/".join(identity) for identity in identities)
    parts.extend(sorted(f.get("var", "") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")))
    for form in sorted(query.findall(f"{{{NS_DATA}}}x"), key=_form_type):
        fields = form_fields(form)
        parts.append(_form_type(form))
        for var in sorted(v for v in fields if v != "FORM_TYPE"):
            parts.append(var)
            parts.extend(sorted(fields[var]))
    text = "".join(f"{p}<" for p in parts)
    return base64.b64encode(hashlib.sha1(text.encode("utf-8")).digest()).decode("ascii")  # XEP-0115 mandates SHA-1


def _form_type(form: ET.Element) -> str:
    return (form_fields(form).get("FORM_TYPE") or [""])[0]


def notify_nodes(features: frozenset[str]) -> set[str]:
    """The nodes a client asked to be notified of (XEP-0163 §4.3.1: `node+notify`)."""
    return {f[: -len("+notify")] for f in features if f.endswith("+notify")}


def caps_of(presence: ET.Element) -> str | None:
    """The cache key of a presence's XEP-0115 <c/> (SHA-1 only), or None."""
    c = presence.find(f"{{{NS_CAPS}}}c")
    if c is None or c.get("hash") != "sha-1" or not c.get("ver"):
        return None
    return f"sha-1:{c.get('ver')}"


def event_message(owner: JID, to: str, node: str, item_id: str, payload: ET.Element | None,
                  retract: bool = False) -> ET.Element:
    """The notification of one published or retracted item (XEP-0060 §7.1.2.1, §7.2.2.1)."""
    message = ET.Element("message", {"from": str(owner), "to": to, "type": "headline"})
    items = ET.SubElement(ET.SubElement(message, f"{{{NS_EVENT}}}event"), f"{{{NS_EVENT}}}items", {"node": node})
    if retract:
        ET.SubElement(items, f"{{{NS_EVENT}}}retract", {"id": item_id})
    else:
        item = ET.SubElement(items, f"{{{NS_EVENT}}}item", {"id": item_id})
        if payload is not None:
            item.append(payload)
    return message
