"""XEP-0198 over real sockets: alice's connection drops, bob writes to her, she resumes and
gets the message; a session nobody resumes ends after the timeout.
"""

from __future__ import annotations

import pytest

from tests.integration.cluster import FAST_LIMITS, RawClient, cluster_factory, wait_until  # noqa: F401

SM = "urn:xmpp:sm:3"


@pytest.fixture
def cluster(cluster_factory):  # noqa: F811
    return cluster_factory(nodes=1, sets=(*FAST_LIMITS, "limits.sm_resume_timeout_s=3"))


async def alice_with_sm(cluster) -> tuple[RawClient, str]:
    alice = await RawClient.connect(cluster.node("n1"))
    await alice.login("alice", "alice-pw", resource="phone")
    await alice.send(f"<enable xmlns='{SM}' resume='true'/>")
    resume_id = (await alice.expect(r"<enabled [^>]*id='([0-9a-f]+)'")).group(1)
    return alice, resume_id


async def test_resume_delivers_what_arrived_while_detached(cluster):
    alice, resume_id = await alice_with_sm(cluster)
    bob = await RawClient.connect(cluster.node("n1"))
    await bob.login("bob", "bob-pw")
    alice.close()  # the network drops: no </stream:stream>
    node = cluster.node("n1")
    await wait_until(lambda: node.metrics()["jsm_sessions_composed"] == 1, 10, "alice detached")
    assert node.metrics()["jsm_sessions_client"] == 2  # still bound while resumable

    await bob.send("<iq type='get' id='to-alice' to='alice@example.test/phone'><ping xmlns='urn:xmpp:ping'/></iq>")
    again = await RawClient.connect(node)
    await again.starttls()
    assert await again.auth_plain("alice", "alice-pw") == "success"
    await again.open_stream()
    await again.send(f"<resume xmlns='{SM}' previd='{resume_id}' h='0'/>")
    await again.expect(f"<resumed xmlns='{SM}' h='0' previd='{resume_id}'/>")
    await again.expect(r"<iq [^>]*id='to-alice'[^>]*>.*?</iq>")  # queued while detached, re-sent
    assert node.metrics()["jsm_sessions_composed"] == 0
    await again.send(f"<r xmlns='{SM}'/>")
    await again.expect(f"<a xmlns='{SM}' h='0'/>")
    again.close()
    bob.close()


async def test_a_message_to_a_detached_session_waits_for_the_resumption(cluster):
    """Deliveries pass the serialized stanza too (`Session.send(stanza, wire)`): a detached
    session queues them like any other (it raised TypeError and lost them)."""
    alice, resume_id = await alice_with_sm(cluster)
    bob = await RawClient.connect(cluster.node("n1"))
    await bob.login("bob", "bob-pw")
    alice.close()
    node = cluster.node("n1")
    await wait_until(lambda: node.metrics()["jsm_sessions_composed"] == 1, 10, "alice detached")
    await bob.send("<message to='alice@example.test/phone' type='chat' id='m1'><body>while away</body></message>")
    again = await RawClient.connect(node)
    await again.starttls()
    assert await again.auth_plain("alice", "alice-pw") == "success"
    await again.open_stream()
    await again.send(f"<resume xmlns='{SM}' previd='{resume_id}' h='0'/>")
    await again.expect(f"<resumed xmlns='{SM}' h='0' previd='{resume_id}'/>")
    await again.expect(r"<message [^>]*id='m1'[^>]*>.*?while away")
    again.close()
    bob.close()


async def test_resume_with_a_wrong_id_fails_and_bind_still_works(cluster):
    node = cluster.node("n1")
    client = await RawClient.connect(node)
    await client.starttls()
    assert await client.auth_plain("alice", "alice-pw") == "success"
    await client.open_stream()
    await client.send(f"<resume xmlns='{SM}' previd='0123' h='0'/>")
    await client.expect(r"<failed [^>]*><item-not-found")
    await client.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    await client.expect(r"<jid>alice@example.test/[0-9a-f]+</jid>")
    client.close()


async def test_someone_elses_session_cannot_be_resumed(cluster):
    alice, resume_id = await alice_with_sm(cluster)
    alice.close()
    bob = await RawClient.connect(cluster.node("n1"))
    await bob.starttls()
    assert await bob.auth_plain("bob", "bob-pw") == "success"
    await bob.open_stream()
    await bob.send(f"<resume xmlns='{SM}' previd='{resume_id}' h='0'/>")
    await bob.expect(r"<failed [^>]*><item-not-found")
    bob.close()


async def test_unresumed_session_ends_after_the_timeout(cluster):
    alice, _ = await alice_with_sm(cluster)
    node = cluster.node("n1")
    alice.close()
    await wait_until(lambda: node.metrics()["jsm_sessions_composed"] == 1, 10, "alice detached")
    await wait_until(lambda: node.metrics()["jsm_sessions_client"] == 0, 15, "the resumption window to close")
    assert node.metrics()["jsm_sessions_composed"] == 0


async def test_slixmpp_stream_management_resumes_after_a_dropped_connection(cluster):
    import asyncio

    from tests.integration.cluster import slix_disconnect, slix_login

    alice = await slix_login(cluster, "alice", resource="sm", plugins=("xep_0030", "xep_0199", "xep_0198"))
    sm = alice.plugin["xep_0198"]
    deadline = asyncio.get_running_loop().time() + 10
    while not sm.sm_id and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert sm.sm_id, "slixmpp did not enable resumable stream management"
    resumed = asyncio.get_running_loop().create_future()
    alice.add_event_handler("session_resumed", lambda _e: resumed.done() or resumed.set_result(True))
    alice.transport.abort()  # the network drops
    alice.connect(cluster.node("n1").host, cluster.node("n1").client_port)
    assert await asyncio.wait_for(resumed, 15)
    rtt = await alice.plugin["xep_0199"].ping("example.test", timeout=5)
    assert rtt >= 0
    await slix_disconnect(alice)
