"""Which node serves whom, and how a node stops.

Scenarios: bob is served by n2; he logs in on n1 and is sent to n2 with see-other-host
(when the cluster redirects) or refused clearly (when it does not). A node stopped with
SIGTERM ends every stream with system-shutdown and exits 0.
"""

from __future__ import annotations

import signal

from tests.integration.cluster import RawClient, cluster_factory, wait_until  # noqa: F401


async def test_user_of_another_node_is_redirected_with_see_other_host(cluster_factory):  # noqa: F811
    cluster = cluster_factory(nodes=2, placement={"bob": "n2"}, params={"see_other_host_redirect": "true"})
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    bob = await RawClient.connect(n1)
    await bob.starttls()
    # \0bob\0bob-pw
    await bob.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGJvYgBib2ItcHc=</auth>")
    match = await bob.expect(r"<see-other-host [^>]*>([^<]+)</see-other-host>")
    assert match.group(1) == f"127.0.0.1:{n2.client_port}"
    assert await bob.closed()
    on_n2 = await RawClient.connect(n2)
    await on_n2.login("bob", "bob-pw")  # the node the database names serves him
    on_n2.close()


async def test_user_served_by_no_node_is_refused(cluster_factory):  # noqa: F811
    cluster = cluster_factory(nodes=1)
    cluster.cli("user", "assign", "bob")  # no node: e.g. in the middle of a move
    bob = await RawClient.connect(cluster.node("n1"))
    await bob.starttls()
    assert await bob.auth_plain("bob", "bob-pw") == "temporary-auth-failure"
    bob.close()


async def test_sigterm_ends_every_stream_with_system_shutdown(cluster_factory):  # noqa: F811
    cluster = cluster_factory(nodes=1)
    node = cluster.node("n1")
    alice = await RawClient.connect(node)
    await alice.login("alice", "alice-pw")
    bob = await RawClient.connect(node)
    await bob.login("bob", "bob-pw")
    node.process.send_signal(signal.SIGTERM)
    for client in (alice, bob):
        assert await client.stream_error() == "system-shutdown"
        await client.expect(r"</stream:stream>")
        assert await client.closed()
    await wait_until(lambda: not node.alive(), 15, "the node to exit")
    assert node.process.returncode == 0
