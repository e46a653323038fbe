"""Relayed connections taken over (server.cluster.relay): which become local sessions
after a takeover (`to_take_over`), and how the dialer hands them over."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any

from presence_ha.server.cluster.arrivals import Arrivals
from presence_ha.server.cluster.relay import RelayDialer, Relayed, to_take_over
from presence_ha.server.cluster.service import ClusterService
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import StreamError
from presence_ha.server.xmpp.jid import JID


def test_only_users_served_here_whose_host_is_unreachable_are_taken_over():
    relayed = [
        Relayed("a", "node1", "user1"),  # served here now, host dead: taken over
        Relayed("b", "node1", "user3"),  # still served by the dead node's group elsewhere
        Relayed("c", "node3", "user1"),  # (another resource) host alive: it ends its own session
        Relayed("d", "node1", "user5"),
    ]
    assert to_take_over(relayed, {"user1", "user5"}, {"node1"}) == ["a", "d"]
    assert to_take_over(relayed, {"user1"}, set()) == []
    assert to_take_over(relayed, set(), {"node1", "node3"}) == []
    assert to_take_over([], {"user1"}, {"node1"}) == []


class FakeMesh:
    def __init__(self, down: set[str]) -> None:
        self.down = down

    def unreachable_for(self, node: str) -> float:
        return 1.0 if node in self.down else 0.0


class FakeConnection:
    def __init__(self, jid: str, local: bool = True) -> None:
        self.jid, self.local = JID.parse(jid), local
        self.sent: list[ET.Element] = []
        self.replayed: list[ET.Element] = []
        self.kicked: list[StreamError | None] = []

    def send_stanza(self, stanza: ET.Element) -> None:
        self.sent.append(stanza)

    def kick_soon(self, error: StreamError | None) -> None:
        self.kicked.append(error)

    async def become_local(self) -> Session | None:
        return Session(jid=self.jid, send=self.send_stanza) if self.local else None

    def replay(self, stanza: ET.Element) -> None:
        self.replayed.append(stanza)


def _dialer(down: set[str], conns: dict[str, tuple[FakeConnection, str]]) -> RelayDialer:
    mesh: Any = FakeMesh(down)
    dialer = RelayDialer(mesh)
    for sid, (connection, node) in conns.items():
        dialer._conns[sid] = (connection, node, connection.jid.local or "")
    return dialer


async def test_the_dialer_hands_the_chosen_connections_over_and_replays_what_they_sent():
    one, three, other = FakeConnection("user1@d/a"), FakeConnection("user3@d/a"), FakeConnection("user1@d/b")
    dialer = _dialer({"node1"}, {"s1": (one, "node1"), "s3": (three, "node1"), "s9": (other, "node3")})
    sessions = await dialer.take_over({"user1"})
    assert [str(s.jid) for s in sessions] == ["user1@d/a"]
    assert dialer.count() == 2  # no longer relayed: nothing comes or goes through the relay
    dialer.downstream("s1", ET.Element("message"))
    dialer.peer_lost("node1", "is unreachable")
    assert one.sent == [] and one.kicked == [] and len(three.kicked) == 1 and other.kicked == []
    assert dialer.replay_upstream("s1", ET.Element("message")) is True
    assert dialer.replay_upstream("s3", ET.Element("message")) is False
    assert len(one.replayed) == 1
    dialer.replayed()
    assert dialer.replay_upstream("s1", ET.Element("message")) is False


async def test_a_connection_that_cannot_turn_local_stays_relayed():
    opening = FakeConnection("user1@d/a", local=False)
    dialer = _dialer({"node1"}, {"s1": (opening, "node1")})
    assert await dialer.take_over({"user1"}) == []
    assert dialer.count() == 1 and dialer.replay_upstream("s1", ET.Element("message")) is False


async def test_what_the_dead_host_never_acknowledged_is_routed_again_after_the_take_over():
    service: Any = ClusterService.__new__(ClusterService)
    routed: list[str] = []
    service.arrivals = Arrivals()
    service._reroute_unreachable = lambda: routed.append("rerouted")
    service._broadcast_moved = lambda: routed.append("told")
    taking_over = asyncio.get_running_loop().create_future()
    service._taking_over = taking_over
    service.arrivals.expect(60.0, lambda: None)
    waiting = service.arrivals.pending()
    service.users_active()  # the SRM activated the users: the take-over is still going on
    assert routed == [] and not waiting.done()
    taking_over.set_result(None)
    await asyncio.sleep(0)
    assert routed == ["rerouted", "told"] and waiting.done()
