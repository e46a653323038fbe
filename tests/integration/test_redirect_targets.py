"""Where a node sends the clients it lets go: never to a dead peer.

Scenarios (real node processes, a raw client):
- SIGTERM of n1 while n2 is alive: alice (on n1) is sent to n2 with see-other-host.
- n2 is SIGKILLed, n1 takes its users over (Running in Backup Mode); then n1 is
  stopped too: alice gets `system-shutdown`, not a see-other-host to the dead n2.
"""

from __future__ import annotations

import signal

import pytest

from tests.integration.cluster import RawClient, ha_pair_factory, ha_states, wait_until  # noqa: F401

pytestmark = pytest.mark.timeout(120)


async def logged_in_on_n1(cluster) -> RawClient:
    raw = await RawClient.connect(cluster.node("n1"))
    await raw.login("alice", "alice-pw")
    await raw.send("<presence/>")
    return raw


async def test_a_node_stopping_beside_a_live_peer_sends_its_clients_there(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory()
    raw = await logged_in_on_n1(cluster)
    try:
        cluster.node("n1").process.send_signal(signal.SIGTERM)
        match = await raw.expect(r"<stream:error><(see-other-host|system-shutdown)[^>]*>([^<]*)<")
        assert match.group(1) == "see-other-host"
        assert match.group(2) == f"{cluster.node('n2').host}:{cluster.node('n2').client_port}"
    finally:
        raw.close()


async def test_a_node_whose_peer_is_dead_never_sends_clients_to_it(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory()
    raw = await logged_in_on_n1(cluster)
    try:
        cluster.node("n2").process.send_signal(signal.SIGKILL)
        await wait_until(lambda: ha_states(cluster.db_url)["n1"] == ("Running in Backup Mode", "Peer Down"), 20,
                         "n1 taking n2's users over")
        cluster.node("n1").process.send_signal(signal.SIGTERM)
        match = await raw.expect(r"<stream:error><(see-other-host|system-shutdown)[^>]*")
        assert match.group(1) == "system-shutdown", "a client was sent to the dead node"
    finally:
        raw.close()
