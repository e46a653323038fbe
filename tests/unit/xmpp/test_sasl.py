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


def test_plain_unknown_user_costs_a_derivation_like_a_wrong_password():
    """Issue #19 item 8: an unknown name derives against dummy keys with the same
    iteration count, then fails like a wrong password (no timing difference)."""
    unknown = sasl.SaslExchange("PLAIN", domain="d", nonce="n", secret=b"s")
    unknown.start(b"\x00nobody\x00pw")
    step = unknown.credentials(None)
    dummy = sasl.dummy_keys(b"s", "nobody", "SCRAM-SHA-256")
    assert step == sasl.NeedDerivation(b"pw", dummy.salt, dummy.iterations)
    assert dummy.iterations == keys_for("pw").iterations  # same cost as a real user's keys
    salted = sasl.salted_password(b"pw", dummy.salt, dummy.iterations)
    assert unknown.derived(salted) == sasl.Failed(sasl.SaslCondition.NOT_AUTHORIZED, None, "nobody")


def test_sasl_names_and_passwords_are_prepared_by_precis():
    """RFC 8265: U+017F (a compatibility character) is no username; a password with a
    control character is refused unchecked; a non-ASCII space maps to U+0020."""
    long_s = sasl.SaslExchange("PLAIN", domain="d", nonce="n", secret=b"s")
    assert long_s.start("\x00u\u017fer1\x00pw".encode()) != sasl.NeedCredentials("user1", "SCRAM-SHA-256")
    control = sasl.SaslExchange("PLAIN", domain="d", nonce="n", secret=b"s")
    control.start(b"\x00alice\x00p\x07w")
    assert control.credentials(keys_for("pw")) == sasl.Failed(sasl.SaslCondition.NOT_AUTHORIZED, None, "alice")
    keys = keys_for("pass word")
    assert sasl.plain_matches("pass\u00a0word", keys)  # OpaqueString maps it, as SASLprep did


def test_plain_asks_the_host_to_derive_then_checks_the_result():
    keys = sasl.dummy_keys(b"s", "alice", "SCRAM-SHA-256")
    right = sasl.SaslExchange("PLAIN", domain="d", nonce="n", secret=b"s")
    right.start(b"\x00alice\x00pw")
    assert right.credentials(keys) == sasl.NeedDerivation(b"pw", keys.salt, keys.iterations)
    assert right.derived(b"not the salted password") == sasl.Failed(sasl.SaslCondition.NOT_AUTHORIZED, None, "alice")
