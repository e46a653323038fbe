"""Dual connections on real node processes with the real client (SPEC §8).

Scenarios:
- alice (n1) asks for her backup: n2, its client address and n1's re-login limits;
  her client opens the inactive connection to n2 after the random delay.
- HA off: "no backup (ha-disabled)"; the client opens no second connection.
- X users on n1 and Y on n2, all dual-connected: n1 shows JsmSessionsClient=X and
  JsmSessionsClientInactive=Y, n2 shows Y and X (the nodes' own metrics).
- A backup connection that does not `<hold/>` first (a client that does not know
  the protocol) is relayed to its active node (with see-other-host redirects on, it
  is sent there with see-other-host).
Timers are shortened: re-login limits 1-1 s, SRM heartbeat 1 s.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from presence_ha.client.dual import ClientEvent, ConnectionEvent, DualClient, MessageReceived, PresenceChanged
from presence_ha.client.policy import Endpoint, Link
from tests.integration.cluster import (  # noqa: F401
    Cluster,
    RawClient,
    cluster_factory,
    ha_pair_factory,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

FAST_RELOGIN = {"relogin_lower_s": 1, "relogin_upper_s": 1}
DEADLINE_S = 15.0


@dataclass
class Party:
    """A user's DualClient and everything it reported, in order."""

    client: DualClient
    events: list[ClientEvent] = field(default_factory=list)

    def connection_events(self, kind: str) -> list[ConnectionEvent]:
        return [e for e in self.events if isinstance(e, ConnectionEvent) and e.kind == kind]

    def messages(self) -> list[MessageReceived]:
        return [e for e in self.events if isinstance(e, MessageReceived)]

    def presences(self) -> list[PresenceChanged]:
        return [e for e in self.events if isinstance(e, PresenceChanged)]

    @property
    def dual_up(self) -> bool:
        state = self.client.policy.state
        return state.active is Link.UP and state.inactive is Link.UP


def endpoint(cluster: Cluster, node: str) -> Endpoint:
    proc = cluster.node(node)
    return Endpoint(proc.host, proc.client_port)


@pytest.fixture
async def login() -> AsyncIterator[Callable]:
    """`await login(cluster, user, node, dual=True)`: a started Party, stopped at teardown."""
    parties: list[Party] = []

    async def start(cluster: Cluster, username: str, node: str = "n1", dual: bool = True, resource: str = "r",
                    activate_retry_s: float = 0.05) -> Party:
        client = DualClient(f"{cluster.jid(username)}/{resource}", cluster.users[username], endpoint(cluster, node),
                            dual=dual, insecure=True, rng=random.Random(username), activate_retry_s=activate_retry_s)
        party = Party(client)
        client.add_listener(party.events.append)
        parties.append(party)
        await client.start(timeout_s=DEADLINE_S)
        return party

    yield start
    await asyncio.gather(*(party.client.stop() for party in parties))


def gauges(cluster: Cluster, node: str) -> dict[str, float]:
    names = ("jsm_sessions_client", "jsm_sessions_client_inactive", "active_jsm_sessions", "inactive_jsm_sessions")
    metrics = cluster.node(node).metrics()
    return {name: metrics[name] for name in names}


async def test_backup_info_then_inactive_connection_after_the_delay(ha_pair_factory, login) -> None:  # noqa: F811
    cluster = ha_pair_factory(params={"relogin_lower_s": 1, "relogin_upper_s": 2})
    started = time.monotonic()
    alice = await login(cluster, "alice")
    await wait_until(lambda: alice.dual_up, DEADLINE_S, "alice's inactive connection")
    info = alice.client.policy.state.info
    got = (info.node, info.endpoint, info.relogin_lower_s, info.relogin_upper_s)
    assert got == ("n2", endpoint(cluster, "n2"), 1, 2)
    (held,) = alice.connection_events("held")
    (connected,) = alice.connection_events("connected")
    assert held.endpoint == endpoint(cluster, "n2")
    assert 1000 <= held.mono_ms - connected.mono_ms <= 2000 + 1000  # the random delay (+ login time)
    assert time.monotonic() - started < 10


async def test_ha_off_no_backup_offered_and_no_inactive_connection(cluster_factory, login) -> None:  # noqa: F811
    cluster = cluster_factory(nodes=2, params=FAST_RELOGIN)
    alice = await login(cluster, "alice")
    await wait_until(lambda: alice.client.policy.state.info is not None, DEADLINE_S, "the backup answer")
    info = alice.client.policy.state.info
    assert (info.node, info.endpoint, info.reason) == (None, None, "ha-disabled")
    await asyncio.sleep(2.0)  # absence: wait out twice the upper limit before looking
    assert alice.client.policy.state.inactive is Link.DOWN
    assert not alice.connection_events("held") and not [e for e in alice.events if getattr(e, "role", None) is not None
                                                        and e.role.value == "inactive"]
    assert gauges(cluster, "n2")["jsm_sessions_client_inactive"] == 0
    assert gauges(cluster, "n1")["jsm_sessions_client"] == 1


async def test_counters_x_on_primary_y_on_secondary_all_dual_connected(ha_pair_factory, login) -> None:  # noqa: F811
    users = [(f"a{i}", f"a{i}-pw") for i in range(3)] + [(f"b{i}", f"b{i}-pw") for i in range(2)]
    placement = {name: "n2" for name, _ in users if name.startswith("b")}
    cluster = ha_pair_factory(users=users, placement=placement, params=FAST_RELOGIN)
    parties = [await login(cluster, name, placement.get(name, "n1")) for name, _ in users]
    await wait_until(lambda: all(p.dual_up for p in parties), DEADLINE_S, "every client dual-connected")
    x, y = 3, 2
    await wait_until(lambda: gauges(cluster, "n1")["jsm_sessions_client_inactive"] == y, 5, "n1 gauges")
    await wait_until(lambda: gauges(cluster, "n2")["jsm_sessions_client_inactive"] == x, 5, "n2 gauges")
    assert gauges(cluster, "n1") == {"jsm_sessions_client": x, "jsm_sessions_client_inactive": y,
                                     "active_jsm_sessions": x, "inactive_jsm_sessions": y}
    assert gauges(cluster, "n2") == {"jsm_sessions_client": y, "jsm_sessions_client_inactive": x,
                                     "active_jsm_sessions": y, "inactive_jsm_sessions": x}
    await parties[0].client.stop()  # the gauges follow the session registry
    await wait_until(lambda: gauges(cluster, "n1")["jsm_sessions_client"] == x - 1, 5, "n1 after a1 left")
    await wait_until(lambda: gauges(cluster, "n2")["jsm_sessions_client_inactive"] == x - 1, 5, "n2 after a1 left")


async def test_a_client_without_the_backup_protocol_on_the_pair_peer_is_relayed(ha_pair_factory) -> None:  # noqa: F811
    """A standard client of n1's user that dialled n2 (the pair's other address, or the
    service address that led it there) is admitted as a possible backup connection; its
    first stanza is no `<hold/>`, so its session is relayed to n1: no see-other-host
    (the default; these tests' pairs otherwise turn redirects on)."""
    cluster = ha_pair_factory(params={**FAST_RELOGIN, "see_other_host_redirect": "false"})
    raw = await RawClient.connect(cluster.node("n2"))
    try:
        await raw.login("alice", "alice-pw")  # admitted on her backup node, bound inactive for now
        await raw.send("<presence/>")  # a client that does not know the protocol
        await raw.send("<iq type='get' id='p1' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        await raw.expect(r"<iq[^>]*id=.p1.[^>]*type=.result.|<iq[^>]*type=.result.[^>]*id=.p1.")
        assert "see-other-host" not in raw.buffer
        await wait_until(lambda: gauges(cluster, "n1")["jsm_sessions_client"] == 1, 5, "alice served by n1")
        assert gauges(cluster, "n2")["jsm_sessions_client_inactive"] == 0
    finally:
        raw.close()


async def test_backup_connection_without_hold_is_redirected_when_redirects_are_on(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory(params={**FAST_RELOGIN, "see_other_host_redirect": "true"})
    raw = await RawClient.connect(cluster.node("n2"))
    try:
        await raw.login("alice", "alice-pw")  # admitted on her backup node, bound inactive
        await raw.send("<presence/>")  # a client that does not know the protocol
        match = await raw.expect(r"<stream:error><see-other-host[^>]*>([^<]+)</see-other-host>")
        assert match.group(1) == str(endpoint(cluster, "n1"))
        assert await raw.closed()
    finally:
        raw.close()
    assert gauges(cluster, "n2")["jsm_sessions_client_inactive"] == 0
