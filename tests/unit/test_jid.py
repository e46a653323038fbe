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
     "alice@example.com/" + "r" * 1024, "al\x00ice@example.com",
     # PRECIS (RFC 7622 §3, RFC 8265): issue #19 item 10
     "u\u017fer1@example.com",  # LATIN SMALL LETTER LONG S: a compatibility character
     "user3\u200b@example.com",  # ZERO WIDTH SPACE: default ignorable
     "alice@example.com/r\u200e",  # a bidi mark in a resource (OpaqueString: disallowed)
     "\u2163@example.com",  # ROMAN NUMERAL FOUR (NFKC would have made it 'iv')
     "alice@xn--zz.example.com\u00e9",  # not a valid IDNA2008 name
     "alice@example.com/r\x7f"],
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\u00c4lice@Example.com", "\u00e4lice@example.com"),  # case-mapped (UsernameCaseMapped)
        ("alice@B\u00fccher.Example", "alice@b\u00fccher.example"),  # IDNA2008 U-label, lower case
        ("alice@example.com/Caf\u0065\u0301", "alice@example.com/Caf\u00e9"),  # NFC (OpaqueString)
        ("alice@example.com/a\u00a0b", "alice@example.com/a b"),  # non-ASCII space -> U+0020
        ("ALICE@EXAMPLE.COM/ Res ", "alice@example.com/ Res "),  # ASCII fast path = the profile's result
    ],
)
def test_precis_preparation(text, expected):
    assert str(JID.parse(text)) == expected
