"""SCRAM-*-PLUS: gs2 header rules, channel-binding data checks, the 'y' downgrade rule, XEP-0440."""

from __future__ import annotations

import random

import pytest

from presence_ha.loadtest.scram import SaltedPasswords, ScramExchange
from presence_ha.server.xmpp import sasl
from presence_ha.server.xmpp.negotiation import sasl_channel_binding
from presence_ha.server.xmpp.stanzas import to_bytes
from presence_ha.server.xmpp.stream import StreamSettings, XmppStream
from tests.unit.xmpp.transcript import keys_for

CB = b"\x07" * 32


class Binding:
    def __init__(self, types: tuple[str, ...] = ("tls-exporter",), data: bytes = CB) -> None:
        self._types, self._data = types, data

    def types(self) -> tuple[str, ...]:
        return self._types

    def data(self, cb_type: str) -> bytes | None:
        return self._data if cb_type in self._types else None


def run(mechanism: str, client: ScramExchange, binding: Binding | None, password: str = "pw") -> sasl.Step:
    """One exchange against the stored keys of `password`; the last step."""
    exchange = sasl.SaslExchange(mechanism, domain="d", nonce="s" * 48, secret=b"k", binding=binding)
    step = exchange.start(client.first().encode())
    if not isinstance(step, sasl.NeedCredentials):
        return step
    assert step.mechanism == sasl.base_mechanism(mechanism)  # -PLUS: the base mechanism's stored keys
    step = exchange.credentials(keys_for(password, step.mechanism))
    assert isinstance(step, sasl.Challenge)
    step = exchange.respond(client.final(step.data.decode()).encode())
    if isinstance(step, sasl.Verified):
        assert step.additional is not None
        client.check(step.additional.decode())
    return step


def client(mechanism: str, **kwargs) -> ScramExchange:
    return ScramExchange(mechanism, "alice", "pw", "c" * 24, SaltedPasswords(), **kwargs)


@pytest.mark.parametrize("mechanism", sasl.SCRAM_PLUS_MECHANISMS)
def test_plus_with_matching_binding_data_succeeds(mechanism):
    step = run(mechanism, client(mechanism, cb_type="tls-exporter", cb_data=CB), Binding())
    assert isinstance(step, sasl.Verified) and step.username == "alice"


def test_plus_with_wrong_data_or_password_is_not_authorized():
    step = run("SCRAM-SHA-256-PLUS", client("SCRAM-SHA-256-PLUS", cb_type="tls-exporter", cb_data=bytes(32)),
               Binding())
    assert isinstance(step, sasl.Failed) and step.condition is sasl.SaslCondition.NOT_AUTHORIZED
    assert step.text and "channel binding" in step.text
    step = run("SCRAM-SHA-256-PLUS", client("SCRAM-SHA-256-PLUS", cb_type="tls-exporter", cb_data=CB), Binding(),
               password="other")
    assert step == sasl.Failed(sasl.SaslCondition.NOT_AUTHORIZED, None, "alice")


@pytest.mark.parametrize(("mechanism", "kwargs", "binding", "why"), [
    ("SCRAM-SHA-256", {"gs2_flag": "y"}, Binding(), "downgrade"),  # RFC 5802 §6
    ("SCRAM-SHA-256", {"cb_type": "tls-exporter", "cb_data": CB}, Binding(), "requires SCRAM-SHA-256-PLUS"),
    ("SCRAM-SHA-256-PLUS", {}, Binding(), "requires channel binding"),
    ("SCRAM-SHA-256-PLUS", {"gs2_flag": "y"}, Binding(), "requires channel binding"),
    ("SCRAM-SHA-256-PLUS", {"cb_type": "tls-unique", "cb_data": CB}, Binding(), "not offered"),
])
def test_gs2_header_refusals_come_before_the_keys(mechanism, kwargs, binding, why):
    step = run(mechanism, client(mechanism, **kwargs), binding)
    assert isinstance(step, sasl.Failed) and step.condition is sasl.SaslCondition.NOT_AUTHORIZED
    assert step.text and why in step.text


def test_y_flag_is_fine_where_no_binding_was_offered():
    assert isinstance(run("SCRAM-SHA-256", client("SCRAM-SHA-256", gs2_flag="y"), None), sasl.Verified)
    assert isinstance(run("SCRAM-SHA-1", client("SCRAM-SHA-1"), Binding()), sasl.Verified)  # n,, always


def test_plus_needs_an_offered_binding():
    with pytest.raises(ValueError, match="unsupported"):
        sasl.SaslExchange("SCRAM-SHA-256-PLUS", domain="d", nonce="n", secret=b"s")


def test_gs2_header_parsing():
    assert sasl.gs2_header("p=tls-exporter,,n=a,r=x") == sasl.Gs2Header("p", "tls-exporter", "p=tls-exporter,,")
    assert sasl.gs2_header("y,a=alice,n=a,r=x") == sasl.Gs2Header("y", None, "y,a=alice,")
    for bad in ("p=,,n=a,r=x", "p=tls exporter,,n=a", "q,,n=a", "n"):
        with pytest.raises(ValueError, match="gs2"):
            sasl.gs2_header(bad)


def test_plus_final_message_faults_are_malformed():
    exchange = sasl.SaslExchange("SCRAM-SHA-256-PLUS", domain="d", nonce="s" * 48, secret=b"k", binding=Binding())
    scram = client("SCRAM-SHA-256-PLUS", cb_type="tls-exporter", cb_data=CB)
    exchange.start(scram.first().encode())
    challenge = exchange.credentials(keys_for("pw"))
    assert isinstance(challenge, sasl.Challenge)
    final = scram.final(challenge.data.decode()).replace("r=cccc", "r=dddd")  # another nonce
    step = exchange.respond(final.encode())
    assert isinstance(step, sasl.Failed) and step.condition is sasl.SaslCondition.MALFORMED_REQUEST


def test_xep_0440_element():
    assert to_bytes(sasl_channel_binding(("tls-exporter", "tls-unique"))).decode() == (
        "<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>"
        "<channel-binding type='tls-unique'/></sasl-channel-binding>")


def features(binding: Binding | None) -> str:
    stream = XmppStream(StreamSettings(domain="example.test"), random.Random(1), b"k", tls_active=True,
                        binding=binding)
    stream.receive_data(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                        b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>")
    return b"".join(e.data for e in stream.events() if hasattr(e, "data")).decode()


def test_features_offer_plus_and_the_types_only_with_a_binding():
    out = features(Binding())
    assert ("<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism>"
            "<mechanism>SCRAM-SHA-256</mechanism>") in out
    assert "<channel-binding type='tls-exporter'/>" in out and "starttls" not in out
    plain = features(Binding(types=()))  # e.g. the exporter is unavailable
    assert "PLUS" not in plain and "sasl-cb" not in plain
