"""Manual failover and fallback are make-before-break for every client (issue #18, 5).

The node being failed over (or the backup falling back) demotes its clients' sessions
(no traffic, connections open) and redirects a client only once its peer serves that
user: the peer's fenced move is committed and its inactive sessions are active.
Real node processes, a standard client (byte-level, no backup protocol) and the dual
client with no backup connection yet (its re-login limits are long: it cannot have
opened one). Each redirected client logs in on the node it
was sent to at the first try and is served there; none is sent back.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.cluster import (  # noqa: F401
    Cluster,
    RawClient,
    active_nodes,
    ha_pair_factory,
    ha_states,
    wait_until,
)
from tests.integration.test_dual_failover import active_on
from tests.integration.test_dual_sessions import DEADLINE_S, Party, endpoint, login  # noqa: F401

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]

NO_BACKUP_YET = {"relogin_lower_s": 120, "relogin_upper_s": 120}  # no inactive connection during the test
SWITCH_S = 2.0  # issue #18: no client offline for more than 2 s


async def standard_login(cluster: Cluster, node: str, username: str, resource: str) -> RawClient:
    """A client that knows no backup protocol, bound (as an active session) on `node`."""
    client = await RawClient.connect(cluster.node(node))
    await client.login(username, cluster.users[username], resource)
    await round_trip(client, cluster, username, resource, "bound")
    return client


async def round_trip(client: RawClient, cluster: Cluster, username: str, resource: str, text: str) -> None:
    """A message to its own full JID comes back: the node serves the user (a node that
    does not would have sent a stream error instead)."""
    await client.send(f"<message to='{cluster.jid(username)}/{resource}' type='chat' id='{text}'>"
                      f"<body>{text}</body></message>")
    await client.expect(rf"<body>{text}</body>", 5)


async def redirected(client: RawClient, cluster: Cluster, username: str) -> tuple[str, str | None]:
    """(the see-other-host target, the user's active node in the database right then)."""
    match = await client.expect(r"<stream:error><see-other-host[^>]*>([^<]+)</see-other-host>", 15)
    return match.group(1), active_nodes(cluster.db_url)[username]


def address(cluster: Cluster, node: str) -> str:
    proc = cluster.node(node)
    return f"{proc.host}:{proc.client_port}"


def first_try_on(party: Party, cluster: Cluster, node: str) -> bool:
    """The dual client is active on `node` and never had a login refused on the way."""
    return active_on(party, cluster, node) and not party.connection_events("login-failed")


async def test_manual_failover_and_fallback_redirect_only_to_a_node_that_serves(ha_pair_factory, login) -> None:  # noqa: F811
    cluster = ha_pair_factory(params=NO_BACKUP_YET)
    alice = await login(cluster, "alice")  # dual client, no backup connection yet
    bob = await standard_login(cluster, "n1", "bob", "desk")
    await wait_until(lambda: alice.client.policy.state.info is not None, DEADLINE_S, "alice got her backup info")
    assert not alice.dual_up

    # Failover: n1 keeps its clients until n2 committed the move; then it redirects them.
    started = time.monotonic()
    cluster.cli("ha", "failover", "n1")
    target, served_by = await redirected(bob, cluster, "bob")
    assert (target, served_by) == (address(cluster, "n2"), "n2")  # redirected once n2 serves bob, to n2
    bob.close()
    bob = await standard_login(cluster, "n2", "bob", "desk")  # at the first try, served there
    await wait_until(lambda: first_try_on(alice, cluster, "n2"), SWITCH_S * 3, "alice on n2 at the first try", 0.01)
    print(f"\nfailover: alice active on n2 {time.monotonic() - started:.2f}s after the request")
    await wait_until(lambda: ha_states(cluster.db_url)["n1"] == ("Idle", "On Admin Request"), 10, "n1 failed over")
    assert len(alice.connection_events("connected")) == 2  # the first login, then n2's, with no retry between

    # Fallback: n2 keeps n1's users until n1 committed taking them back; then it redirects them.
    started = time.monotonic()
    cluster.cli("ha", "fallback", "n1")
    target, served_by = await redirected(bob, cluster, "bob")
    assert (target, served_by) == (address(cluster, "n1"), "n1")
    bob.close()
    bob = await standard_login(cluster, "n1", "bob", "desk")
    await wait_until(lambda: first_try_on(alice, cluster, "n1"), SWITCH_S * 3, "alice on n1 at the first try", 0.01)
    print(f"fallback: alice active on n1 {time.monotonic() - started:.2f}s after the request")
    assert len(alice.connection_events("connected")) == 3
    assert alice.client.send_message(cluster.jid("alice"), "home again")
    await wait_until(lambda: any(m.body == "home again" for m in alice.messages()), 5, "alice's round trip on n1")
    await round_trip(bob, cluster, "bob", "desk", "home")
    bob.close()
