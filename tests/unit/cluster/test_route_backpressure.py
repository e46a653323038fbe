"""ClusterRoute under a full link window: only a client's own stanzas wait.

Two nodes acknowledge routed stanzas once delivered; if delivering one made a node
wait for the other's window, both could wait for ever. So what the server makes by
itself (sender None) is queued without waiting, bounded by the channel's backlog."""

import asyncio
import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.cluster.locations import LocationCache
from presence_ha.server.cluster.routing import ClusterRoute
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import StanzaError
from presence_ha.server.xmpp.jid import JID


class FullChannel:
    """A peer channel whose window is full: nothing goes out at once."""

    up = True

    def __init__(self, backlog_room: int) -> None:
        self.room, self.posted, self.waiting = backlog_room, [], 0
        self.released = asyncio.Event()

    def try_send(self, kind, payload) -> bool:
        return False

    def post(self, kind, payload) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.posted.append(payload)
        return True

    async def send(self, kind, payload) -> None:
        self.waiting += 1
        await self.released.wait()


class Mesh:
    def __init__(self, channel) -> None:
        self._channel = channel

    def channel(self, peer):
        return self._channel

    def unreachable_for(self, peer) -> float:
        return 0.0


async def _route(channel, stanza: str, sender=None):
    async def load(user):
        return "n2"

    async def fingerprint():
        return 0

    route = ClusterRoute("n1", LocationCache(load, fingerprint, lambda: 0.0), Mesh(channel))
    element = ET.fromstring(stanza)
    return route, await asyncio.wait_for(route.route(None, element, JID.parse(element.get("to")), sender), 1.0)


async def test_server_made_stanzas_are_queued_without_waiting():
    channel = FullChannel(backlog_room=10)
    route, taken = await _route(channel, "<presence from='a@x/r' to='bob@x/r'/>")
    assert taken and len(channel.posted) == 1 and channel.waiting == 0 and route.routed == 1


async def test_a_clients_stanza_waits_for_the_window():
    channel = FullChannel(backlog_room=10)
    client = Session(JID.parse("a@x/r"), send=lambda _s: None)
    with pytest.raises(asyncio.TimeoutError):
        await _route(channel, "<message from='a@x/r' to='bob@x'><body>hi</body></message>", sender=client)
    assert channel.waiting == 1 and channel.posted == []


async def test_beyond_the_backlog_a_stanza_is_handled_here():
    channel = FullChannel(backlog_room=0)
    route, taken = await _route(channel, "<message from='a@x/r' to='bob@x'><body>hi</body></message>")
    assert taken is False and route.overflowed == 1  # local rules: offline storage for a message
    with pytest.raises(StanzaError) as info:
        await _route(channel, "<iq type='get' id='1' from='a@x/r' to='bob@x/r'><query xmlns='q'/></iq>")
    assert info.value.condition.value[0] == "resource-constraint"
