"""Real clients log in to a real node: slixmpp with each SASL mechanism, aioxmpp, ping, disco.

Scenario style: alice logs in with MECH; she pings the server and asks what it offers;
the node's metrics count her session; she logs out and the session gauge drops.
"""

from __future__ import annotations

import asyncio

import aioxmpp
import pytest

from tests.integration.cluster import RawClient, cluster_factory, slix_disconnect, slix_login, wait_until  # noqa: F401


@pytest.fixture
def one_node(cluster_factory):  # noqa: F811
    return cluster_factory(nodes=1)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
async def test_slixmpp_logs_in_pings_and_discovers(one_node, mechanism):
    alice = await slix_login(one_node, "alice", mechanism=mechanism, resource="laptop")
    try:
        assert str(alice.boundjid) == "alice@example.test/laptop"
        rtt = await alice.plugin["xep_0199"].ping("example.test", timeout=5)
        assert rtt >= 0
        info = await alice.plugin["xep_0030"].get_info(jid="example.test", timeout=5)
        features = info["disco_info"]["features"]
        assert {"urn:xmpp:ping", "http://jabber.org/protocol/disco#info"} <= set(features)
        assert ("server", "im", None, "presence-ha") in info["disco_info"]["identities"]
        items = await alice.plugin["xep_0030"].get_items(jid="example.test", timeout=5)
        assert items["disco_items"]["items"] == set()
        assert one_node.node("n1").metrics()["jsm_sessions_client"] == 1
    finally:
        await slix_disconnect(alice)
    await wait_until(lambda: one_node.node("n1").metrics()["jsm_sessions_client"] == 0, 10, "session gauge back to 0")


async def test_wrong_password_fails_in_slixmpp(one_node):
    one_node.users["alice"] = "not-the-password"
    with pytest.raises(ConnectionError, match="failed_auth"):
        await slix_login(one_node, "alice", mechanism="SCRAM-SHA-256")
    assert one_node.node("n1").metrics()["auth_failures_total"] >= 1


async def test_aioxmpp_logs_in_and_pings(one_node):
    node = one_node.node("n1")
    client = aioxmpp.PresenceManagedClient(
        aioxmpp.JID.fromstr("alice@example.test"),
        aioxmpp.make_security_layer("alice-pw", no_verify=True),
        override_peer=[(node.host, node.client_port, aioxmpp.connector.STARTTLSConnector())],
    )
    async with client.connected() as stream:
        assert str(client.local_jid.bare()) == "alice@example.test"
        await asyncio.wait_for(aioxmpp.ping.ping(client, aioxmpp.JID.fromstr("example.test")), 10)
        disco = client.summon(aioxmpp.DiscoClient)
        info = await asyncio.wait_for(disco.query_info(aioxmpp.JID.fromstr("example.test")), 10)
        assert "urn:xmpp:ping" in info.features
        assert stream is not None


async def test_session_replaced_by_same_resource_gets_conflict(one_node):
    first = await RawClient.connect(one_node.node("n1"))
    await first.login("alice", "alice-pw", resource="desk")
    second = await RawClient.connect(one_node.node("n1"))
    await second.login("alice", "alice-pw", resource="desk")
    assert await first.stream_error() == "conflict"
    assert await first.closed()
    await second.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    await second.expect(r"<iq [^>]*type='result'[^>]*id='p1'|<iq [^>]*id='p1'[^>]*type='result'")
    second.close()


async def test_metrics_cli_prints_the_node_metrics(one_node):
    out = one_node.cli("node", "metrics", "n1")
    assert "# HELP jsm_sessions_client JsmSessionsClient" in out and "connections_total" in out
