"""Fuzzing the SASL exchange (`server.xmpp.sasl`): SCRAM and PLAIN messages.

Properties: whatever the client sends (random bytes, or SCRAM messages built from
mutated parts: GS2 headers, saslnames with `=` escapes, nonces, channel bindings,
proofs), every call returns a `Step` and never raises; nothing but the right password
is ever `Verified`, and with SCRAM-*-PLUS nothing but the right channel-binding data
too; base64 decoding raises only ValueError.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scramp import ScramClient

from presence_ha.loadtest.scram import SaltedPasswords, ScramError, ScramExchange
from presence_ha.server.xmpp import sasl
from tests.unit.fuzz.profile import fuzz
from tests.unit.xmpp.transcript import keys_for

pytestmark = pytest.mark.timeout(600)  # CI's example counts take minutes on a loaded machine

KEYS = {m: keys_for("s3cret", m) for m in sasl.SCRAM_MECHANISMS}
MECHANISMS = st.sampled_from([*sasl.SCRAM_MECHANISMS, sasl.PLAIN])
STEPS = (sasl.Challenge, sasl.NeedCredentials, sasl.NeedDerivation, sasl.Verified, sasl.Failed)

ATOMS = ["n", "y", "p=tls-unique", "p=tls-exporter", "p=", "a=alice", "a=", "n=alice", "n=al=2Cice", "n=al=3Dice",
         "n=al=xx", "n=", "r=abc", "r=", "c=biws", "c=", "p=AAAA", "p=", "m=ext", "x=1", "", "=", "==", ",", "\x00",
         "alice", "s3cret", "é", "\udcff"]
PART = st.sampled_from(ATOMS) | st.text(max_size=12)
MESSAGE = st.lists(PART, max_size=8).map(",".join)


def encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


CB = b"\x5a" * 32


class Binding:
    """A TLS 1.3 connection's channel bindings (server.tls_binding.TlsBinding)."""

    def types(self) -> tuple[str, ...]:
        return ("tls-exporter",)

    def data(self, cb_type: str) -> bytes | None:
        return CB if cb_type == "tls-exporter" else None


def run(mechanism: str, first: bytes | None, known: bool, final: bytes | None, salted: bytes,
        binding: Binding | None = None) -> list[object]:
    exchange = sasl.SaslExchange(mechanism, domain="example.test", nonce="servernonce", secret=b"secret",
                                 binding=binding)
    steps = [exchange.start(first)]
    if isinstance(steps[-1], sasl.Challenge) and first is None:
        steps.append(exchange.respond(first))
    if isinstance(steps[-1], sasl.NeedCredentials):
        steps.append(exchange.credentials(KEYS[steps[-1].mechanism] if known else None))
    if isinstance(steps[-1], sasl.NeedDerivation):
        steps.append(exchange.derived(salted))
    if isinstance(steps[-1], sasl.Challenge):
        steps.append(exchange.respond(final))
    if isinstance(steps[-1], (sasl.Verified, sasl.Failed)):
        steps.append(exchange.respond(final))  # a response after the end is refused, not a crash
    for step in steps:
        assert isinstance(step, STEPS)
    return steps


@fuzz(40)
@given(mechanism=MECHANISMS, first=st.none() | st.binary(max_size=60) | MESSAGE.map(encoded), known=st.booleans(),
       final=st.none() | st.binary(max_size=60) | MESSAGE.map(encoded), salted=st.binary(min_size=32, max_size=32))
@example(mechanism="SCRAM-SHA-256", first=b"n,,n=alice,r=abc", known=True, final=b"c=biws,r=abcservernonce,p=AAAA",
         salted=b"\0" * 32)
@example(mechanism="PLAIN", first=b"\x00alice\x00\xed\xb3\xbf", known=True, final=None, salted=b"\0" * 32)
def test_any_messages_get_an_answer_and_never_verify(mechanism, first, known, final, salted):
    steps = run(mechanism, first, known, final, salted)
    assert not any(isinstance(s, sasl.Verified) for s in steps)


@fuzz(60)
@given(mechanism=st.sampled_from(sasl.SCRAM_MECHANISMS), position=st.integers(0, 400), byte=st.integers(0, 255),
       which=st.sampled_from(["first", "final"]))
def test_real_scram_with_one_byte_changed(mechanism, position, byte, which):
    """A real client's exchange (scramp), one byte of one message changed: a step each time,
    and `Verified` only if the change left the message as it was."""
    client = ScramClient([mechanism], "alice", "s3cret", c_nonce="clientnonce")
    exchange = sasl.SaslExchange(mechanism, domain="example.test", nonce="servernonce", secret=b"secret")
    first = bytearray(client.get_client_first().encode())
    if which == "first":
        first[position % len(first)] = byte
    step = exchange.start(bytes(first))
    if isinstance(step, sasl.NeedCredentials):
        step = exchange.credentials(KEYS[mechanism])
    if not isinstance(step, sasl.Challenge):
        assert isinstance(step, sasl.Failed)
        return
    try:
        client.set_server_first(step.data.decode())
    except Exception:  # noqa: BLE001 - the client refuses what a mangled first message led to
        return
    final = bytearray(client.get_client_final().encode())
    original = bytes(final)
    if which == "final":
        final[position % len(final)] = byte
    step = exchange.respond(bytes(final))
    assert isinstance(step, (sasl.Verified, sasl.Failed))
    if isinstance(step, sasl.Verified):
        assert bytes(final) == original or which == "first"


@fuzz(100)
@given(text=st.none() | st.text(max_size=40) | st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()))
def test_payload_decoding_raises_only_value_error(text):
    try:
        data = sasl.decode_payload(text)
    except ValueError:
        return
    assert data is None or isinstance(data, bytes)
    if data:
        assert sasl.decode_payload(sasl.encode_payload(data)) == data


@fuzz(80)
@given(text=MESSAGE)
def test_scram_username_raises_only_value_error(text):
    try:
        username, authzid = sasl.scram_username(text)
    except ValueError:
        return
    assert isinstance(username, str) and (authzid is None or isinstance(authzid, str))


@fuzz(30)
@given(mechanism=st.sampled_from([*sasl.SCRAM_PLUS_MECHANISMS, *sasl.SCRAM_MECHANISMS]),
       first=st.none() | st.binary(max_size=60) | MESSAGE.map(encoded), known=st.booleans(),
       final=st.none() | st.binary(max_size=60) | MESSAGE.map(encoded))
@example(mechanism="SCRAM-SHA-256-PLUS", first=b"p=tls-exporter,,n=alice,r=abc", known=True,
         final=b"c=cD10bHMtZXhwb3J0ZXIsLA==,r=abcservernonce,p=AAAA")
def test_plus_any_messages_get_an_answer_and_never_verify(mechanism, first, known, final):
    steps = run(mechanism, first, known, final, b"", Binding())
    assert not any(isinstance(s, sasl.Verified) for s in steps)


@fuzz(40)
@given(mechanism=st.sampled_from(sasl.SCRAM_PLUS_MECHANISMS), position=st.integers(0, 400), byte=st.integers(0, 255),
       which=st.sampled_from(["first", "final"]))
def test_real_scram_plus_with_one_byte_changed(mechanism, position, byte, which):
    """A real -PLUS exchange (loadtest.scram with tls-exporter data), one byte of one
    message changed: `Verified` only if the change left the message as it was."""
    client = ScramExchange(mechanism, "alice", "s3cret", "clientnonce", SaltedPasswords(), cb_type="tls-exporter",
                           cb_data=CB)
    exchange = sasl.SaslExchange(mechanism, domain="example.test", nonce="servernonce", secret=b"secret",
                                 binding=Binding())
    first = bytearray(client.first().encode())
    if which == "first":
        first[position % len(first)] = byte
    step = exchange.start(bytes(first))
    if isinstance(step, sasl.NeedCredentials):
        step = exchange.credentials(KEYS[step.mechanism])
    if not isinstance(step, sasl.Challenge):
        assert isinstance(step, sasl.Failed)
        return
    try:
        final = bytearray(client.final(step.data.decode()).encode())
    except ScramError:  # the client refuses what a mangled first message led to (another nonce)
        return
    original = bytes(final)
    if which == "final":
        final[position % len(final)] = byte
    step = exchange.respond(bytes(final))
    assert isinstance(step, (sasl.Verified, sasl.Failed))
    if isinstance(step, sasl.Verified):
        assert bytes(final) == original and (which == "final" or bytes(first) == client.first().encode())


def test_a_proof_with_its_padding_bits_changed_is_refused():
    """Found by `test_real_scram_with_one_byte_changed`: the last base64 digit before '='
    carries two padding bits; 'w' and 'x' decode to the same proof. The changed message
    must fail, though what it decodes to is right (RFC 4648 §3.5)."""
    client = ScramClient(["SCRAM-SHA-1"], "alice", "s3cret", c_nonce="clientnonce")
    exchange = sasl.SaslExchange("SCRAM-SHA-1", domain="example.test", nonce="servernonce", secret=b"secret")
    step = exchange.start(client.get_client_first().encode())
    if isinstance(step, sasl.NeedCredentials):
        step = exchange.credentials(KEYS["SCRAM-SHA-1"])
    assert isinstance(step, sasl.Challenge)
    client.set_server_first(step.data.decode())
    final = client.get_client_final()
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert final.endswith("=") and not final.endswith("==")
    last = final[-2]
    twin = digits[digits.index(last) ^ 1]  # the same 4 data bits, a padding bit set
    step = exchange.respond((final[:-2] + twin + "=").encode())
    assert isinstance(step, sasl.Failed) and "canonical" in (step.text or "")
    assert sasl.non_canonical_base64(final) is None
