"""SASL helpers: saslname escapes, PLAIN against SCRAM keys, unknown users."""

from __future__ import annotations

import pytest

from presence_ha.server.xmpp import sasl
from tests.unit.xmpp.transcript import keys_for


def test_scram_username_unescapes_saslname():
    assert sasl.scram_username("n,,n=a=2Cb=3Dc,r=xyz") == ("a,b=c", None)
    assert sasl.scram_username("n,a=alice@d,n=alice,r=xyz") == ("alice", "alice@d")
    for bad in ("n,,n=a=ZZ,r=x", "x,,n=a,r=x", "n,,u=a,r=x", "n,,n=a"):
        with pytest.raises(ValueError, match=r"saslname|malformed|missing username"):
            sasl.scram_username(bad)


def test_plain_matches_only_the_right_password():
    keys = keys_for("pässword")
    assert sasl.plain_matches("pässword", keys)
    assert not sasl.plain_matches("password", keys)
    assert not sasl.plain_matches("pässword", keys_for("other"))


def test_dummy_keys_are_stable_and_secret_dependent():
    a = sasl.dummy_keys(b"s1", "mallory", "SCRAM-SHA-1")
    assert a == sasl.dummy_keys(b"s1", "mallory", "SCRAM-SHA-1")
    assert a != sasl.dummy_keys(b"s2", "mallory", "SCRAM-SHA-1")


def test_decode_payload():
    assert sasl.decode_payload(None) is None and sasl.decode_payload("  ") is None
    assert sasl.decode_payload("=") == b""
    assert sasl.decode_payload("YW Jj\n") == b"abc"
    with pytest.raises(ValueError, match="base64"):
        sasl.decode_payload("a*b")


def test_plain_exchange_needs_sha256_keys():
    exchange = sasl.SaslExchange("PLAIN", domain="d", nonce="n", secret=b"s")
    assert exchange.start(b"\x00Alice\x00pw") == sasl.NeedCredentials("alice", "SCRAM-SHA-256")
    assert exchange.credentials(None) == sasl.Failed(sasl.SaslCondition.NOT_AUTHORIZED, None, "alice")


def test_plain_asks_the_host_to_derive_then_checks_the_result():
    keys = sasl.dummy_keys(b"s", "alice", "SCRAM-SHA-256")
    right = sasl.SaslExchange("PLAIN", domain="d", nonce="n", secret=b"s")
    right.start(b"\x00alice\x00pw")
    assert right.credentials(keys) == sasl.NeedDerivation(b"pw", keys.salt, keys.iterations)
    assert right.derived(b"not the salted password") == sasl.Failed(sasl.SaslCondition.NOT_AUTHORIZED, None, "alice")
