"""Stanza type and subscription enums, and the small builders of `server.xmpp.stanzas`."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.xmpp.stanzas import (
    IqType,
    MessageType,
    PresenceType,
    Subscription,
    presence,
    readdressed,
    serialize,
    type_values,
)


def stanza(text: str) -> ET.Element:
    return ET.fromstring(text)


def test_message_type_defaults_to_normal_and_an_unknown_one_is_none():
    assert MessageType.of(stanza("<message/>")) is MessageType.NORMAL
    assert MessageType.of(stanza("<message type='headline'/>")) is MessageType.HEADLINE
    assert MessageType.of(stanza("<message type='Chat'/>")) is None
    assert all(MessageType.of(stanza(f"<message type='{t.value}'/>")) is t for t in MessageType)


def test_presence_type_available_is_the_missing_attribute():
    assert PresenceType.of(stanza("<presence/>")) is PresenceType.AVAILABLE
    assert PresenceType.AVAILABLE.value is None
    assert PresenceType.of(stanza("<presence type='available'/>")) is None  # not an RFC 6121 value
    for t in PresenceType:
        if t.value is not None:
            assert PresenceType.of(stanza(f"<presence type='{t.value}'/>")) is t


def test_iq_type():
    assert IqType.of(stanza("<iq type='set'/>")) is IqType.SET
    assert IqType.of(stanza("<iq/>")) is None


def test_type_values_are_the_route_keys():
    assert type_values(PresenceType.AVAILABLE, PresenceType.UNAVAILABLE) == (None, "unavailable")
    assert type_values(MessageType.CHAT) == ("chat",)


@pytest.mark.parametrize(("sub", "has_to", "has_from"), [
    (Subscription.NONE, False, False), (Subscription.TO, True, False),
    (Subscription.FROM, False, True), (Subscription.BOTH, True, True),
])
def test_subscription_directions(sub, has_to, has_from):
    assert (sub.has_to, sub.has_from) == (has_to, has_from)
    assert Subscription.parse(sub.value) is sub


def test_an_unknown_subscription_state_is_an_error():
    with pytest.raises(ValueError, match="remove"):
        Subscription.parse("remove")


def test_readdressed_copies_shallowly_and_sets_to_and_from():
    original = stanza("<presence from='a@x/r' to='b@x'><show>away</show></presence>")
    copy = readdressed(original, "c@x", "a@x/r2")
    assert serialize(copy) == "<presence from='a@x/r2' to='c@x'><show>away</show></presence>"
    assert copy[0] is original[0] and original.get("to") == "b@x"
    assert readdressed(original, "d@x").get("from") == "a@x/r"


def test_presence_builder():
    unsubscribed = presence(PresenceType.UNSUBSCRIBED, "a@x", "b@x")
    assert serialize(unsubscribed) == "<presence from='a@x' to='b@x' type='unsubscribed'/>"
    assert serialize(presence(PresenceType.AVAILABLE, "a@x/r", "b@x")) == "<presence from='a@x/r' to='b@x'/>"
