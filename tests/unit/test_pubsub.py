"""PEP's pure rules: access models, publish-options, caps hashes, notifications."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.pubsub import (
    BadOptions,
    caps_of,
    caps_ver,
    event_message,
    may_read,
    notify_nodes,
    options_of,
    read_refusal,
)
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import Subscription

OWNER, OTHER = JID.parse("alice@example.test"), JID.parse("bob@example.test")
DATA = "jabber:x:data"


@pytest.mark.parametrize(("model", "subscription", "allowed"), [
    ("presence", Subscription.FROM, True),
    ("presence", Subscription.BOTH, True),
    ("presence", Subscription.TO, False),  # alice sees bob, bob does not see alice
    ("presence", Subscription.NONE, False),
    ("presence", None, False),
    ("open", None, True),
    ("whitelist", Subscription.BOTH, False),
])
def test_access_models(model, subscription, allowed):
    assert may_read(model, OWNER, OTHER, subscription) is allowed
    assert may_read(model, OWNER, OWNER, None)  # the owner always reads


def test_refusals_name_the_pubsub_condition():
    assert read_refusal("presence") == ("not-authorized", "presence-subscription-required")
    assert read_refusal("whitelist") == ("not-allowed", "closed-node")


def form(**fields: str) -> ET.Element:
    x = ET.Element(f"{{{DATA}}}x", {"type": "submit"})
    for var, value in {"FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options", **fields}.items():
        ET.SubElement(ET.SubElement(x, f"{{{DATA}}}field", {"var": var}), f"{{{DATA}}}value").text = value
    return x


def test_publish_options_of_omemo_and_bookmarks():
    assert options_of(None) == {}
    assert options_of(form(**{"pubsub#access_model": "open"})) == {"access_model": "open"}
    bookmarks = form(**{"pubsub#persist_items": "true", "pubsub#access_model": "whitelist", "pubsub#max_items": "max",
                        "pubsub#send_last_published_item": "never", "pubsub#notify_delete": "true"})
    assert options_of(bookmarks) == {"access_model": "whitelist", "max_items": 256, "send_last": False}


@pytest.mark.parametrize("fields", [
    {"pubsub#access_model": "authorize"},
    {"pubsub#persist_items": "false"},
    {"pubsub#max_items": "0"},
    {"pubsub#max_items": "many"},
    {"FORM_TYPE": "urn:example:other"},
])
def test_publish_options_we_cannot_honour(fields):
    with pytest.raises(BadOptions):
        options_of(form(**fields))


def test_caps_ver_of_the_xep_0115_example():
    info = ET.fromstring(
        "<query xmlns='http://jabber.org/protocol/disco#info'>"
        "<identity category='client' name='Exodus 0.9.1' type='pc'/>"
        "<feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>"
        "<feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>"
        "</query>")
    assert caps_ver(info) == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_caps_of_presence_and_notify_nodes():
    presence = ET.fromstring("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='abc='/>"
                             "</presence>")
    assert caps_of(presence) == "sha-1:abc="
    assert caps_of(ET.fromstring("<presence/>")) is None
    assert caps_of(ET.fromstring("<presence><c xmlns='http://jabber.org/protocol/caps' node='n' ver='x'/>"
                                 "</presence>")) is None  # legacy caps without a hash
    features = frozenset({"urn:xmpp:avatar:metadata+notify", "urn:xmpp:avatar:metadata", "urn:xmpp:ping"})
    assert notify_nodes(features) == {"urn:xmpp:avatar:metadata"}


def test_event_messages():
    payload = ET.Element("{urn:xmpp:avatar:metadata}metadata")
    published = event_message(OWNER, "bob@example.test/phone", "urn:xmpp:avatar:metadata", "id1", payload)
    assert published.get("from") == "alice@example.test" and published.get("type") == "headline"
    item = published.find("{http://jabber.org/protocol/pubsub#event}event/{http://jabber.org/protocol/pubsub#event}items/"
                          "{http://jabber.org/protocol/pubsub#event}item")
    assert item is not None and item.get("id") == "id1" and item[0] is payload
    retracted = event_message(OWNER, "bob@example.test", "node", "id1", None, retract=True)
    assert retracted.find(".//{http://jabber.org/protocol/pubsub#event}retract").get("id") == "id1"
