"""Hostile or broken input over real sockets: each gets its stream error (or stanza error)
and bob, connected to the same node the whole time, is unaffected.

Scenario style: bob logs in; mallory connects and misbehaves; mallory's stream ends with
CONDITION and the connection closes; bob pings the server and gets his answer.
"""

from __future__ import annotations

import base64
import time

import pytest

from tests.integration.cluster import FAST_LIMITS, RawClient, cluster_factory  # noqa: F401

LIMITS = (*FAST_LIMITS, "limits.auth_timeout_s=3", "limits.max_stanza_bytes=65536",
          "limits.rate_bytes_per_s=20000", "limits.rate_burst_bytes=100000")
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture
async def world(cluster_factory):  # noqa: F811
    cluster = cluster_factory(nodes=1, sets=LIMITS)
    bob = await RawClient.connect(cluster.node("n1"))
    await bob.login("bob", "bob-pw", resource="witness")
    yield cluster
    await bob_still_served(bob)
    bob.close()


async def bob_still_served(bob: RawClient) -> None:
    await bob.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
    await bob.expect(r"<iq[^>]*id='alive'[^>]*/>")


async def ends_with(client: RawClient, condition: str) -> None:
    assert await client.stream_error() == condition
    await client.expect(r"</stream:stream>")
    assert await client.closed()


async def test_not_well_formed(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.open_stream()
    await mallory.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><a></b>")
    await ends_with(mallory, "not-well-formed")


async def test_dtd_before_the_stream(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.send("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]>")
    await ends_with(mallory, "restricted-xml")


async def test_entity_reference_in_a_stanza_of_a_bound_session(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.login("alice", "alice-pw")
    await mallory.send("<message to='bob@example.test'><body>&xxe;</body></message>")
    await ends_with(mallory, "restricted-xml")


async def test_oversized_stanza(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.login("alice", "alice-pw")
    await mallory.send("<message to='bob@example.test'><body>" + "x" * 70_000 + "</body></message>")
    await ends_with(mallory, "policy-violation")


async def test_invalid_jid_in_to_is_a_stanza_error_and_the_session_goes_on(world):
    alice = await RawClient.connect(world.node("n1"))
    await alice.login("alice", "alice-pw")
    await alice.send("<message to='a@b@@c/' id='m1'><body>x</body></message>")
    match = await alice.expect(r"<message[^>]*type='error'[^>]*>.*?</message>")
    assert f"<jid-malformed xmlns='{STANZAS}'/>" in match.group(0)
    await bob_still_served(alice)
    alice.close()


async def test_sasl_garbage(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.starttls()
    await mallory.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>%%%garbage%%%</auth>")
    await mallory.expect(r"<failure[^>]*><incorrect-encoding/>")
    token = base64.b64encode(b"no nul separators").decode()
    await mallory.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    await mallory.expect(r"<failure[^>]*><malformed-request/>")
    mallory.close()


async def test_wrong_passwords_are_throttled_then_the_stream_ends(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.starttls()
    delays = []
    for attempt in range(3):
        started = time.monotonic()
        assert await mallory.auth_plain("alice", f"guess{attempt}") == "not-authorized"
        delays.append(time.monotonic() - started)
    # 2nd failure waits base (0.2 s), 3rd 2x base; the 3rd also ends the stream
    assert delays[1] >= 0.2 and delays[2] >= 0.4 and delays[2] > delays[0]
    await ends_with(mallory, "policy-violation")
    again = await RawClient.connect(world.node("n1"))
    await again.starttls()
    started = time.monotonic()
    assert await again.auth_plain("alice", "guess3") == "not-authorized"
    assert time.monotonic() - started >= 0.8  # the IP and user are remembered across connections
    assert world.node("n1").metrics()["auth_failures_total"] >= 4
    again.close()


async def test_never_authenticating_connection_times_out(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.open_stream()
    started = time.monotonic()
    await ends_with(mallory, "connection-timeout")
    assert 1.0 < time.monotonic() - started < 10
    silent = await RawClient.connect(world.node("n1"))  # says nothing at all
    assert await silent.stream_error() == "connection-timeout"


async def test_flood_is_a_policy_violation(world):
    mallory = await RawClient.connect(world.node("n1"))
    await mallory.login("alice", "alice-pw")
    chunk = "<presence><status>" + "f" * 900 + "</status></presence>"
    try:
        for _ in range(400):  # ~370 KB, far over a 100 KB burst at 20 KB/s
            await mallory.send(chunk)
    except ConnectionError:
        pass  # the server may already have closed on us
    assert await mallory.stream_error() == "policy-violation"
    errors = world.node("n1").metrics()
    assert errors['stream_errors_total{condition="policy-violation"}'] >= 1
