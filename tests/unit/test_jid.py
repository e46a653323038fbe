"""JID parsing and preparation (RFC 7622)."""

import pytest

from presence_ha.server.xmpp.jid import JID, InvalidJid


@pytest.mark.parametrize(
    ("text", "local", "domain", "resource"),
    [
        ("example.com", None, "example.com", None),
        ("Alice@Example.COM", "alice", "example.com", None),
        ("alice@example.com/Phone", "alice", "example.com", "Phone"),
        ("alice@example.com/a/b@c", "alice", "example.com", "a/b@c"),
        ("example.com/res", None, "example.com", "res"),
        ("example.com.", None, "example.com", None),
    ],
)
def test_parse_valid(text, local, domain, resource):
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)


@pytest.mark.parametrize(
    "text",
    ["", "@example.com", "alice@", "alice@example.com/", "al ice@example.com", 'a"b@example.com',
     "a:b@example.com", "alice@exa mple.com", "alice@example..com", "x" * 1024 + "@example.com",
     "alice@example.com/" + "r" * 1024, "al\x00ice@example.com"],
)
def test_parse_invalid(text):
    with pytest.raises(InvalidJid):
        JID.parse(text)


def test_bare_and_str_roundtrip():
    jid = JID.parse("Bob@Example.com/Home")
    assert str(jid) == "bob@example.com/Home"
    assert jid.bare == JID.parse("bob@example.com")
    assert jid.bare.is_bare and not jid.is_bare
    assert JID.parse("example.com").is_domain
    assert jid.with_resource("Work") == JID.parse("bob@example.com/Work")
