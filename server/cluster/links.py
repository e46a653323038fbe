"""The node-to-node link mesh: one `LinkServer` here, one `LinkClient` to each peer.

Rules of this module:
- Every node of the cluster keeps an authenticated, persistent link to every other
  node: it listens on its `link_port` (peers dial in and send to it) and dials each
  peer's `link_port` (it sends there, through that peer's `PeerChannel`). Links use
  the cluster secret from the database; only the cluster's node names are accepted.
  Redial is the link library's backoff.
- `PRESENCE_HA_LINK_DIAL="n2=host:port,..."` dials a peer at another address than
  its registered one (a tunnel, NAT, or a fault-injection proxy in tests).
- Frames go to `on_frame(peer, kind, payload)`; link facts to `on_restarted(peer)`
  (the peer is a new process: whatever it held is gone) and to the channels'
  up/down marks. Callbacks must not raise (the link library resets on a raise).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from presence_ha.server.cluster.channel import PeerChannel
from presence_ha.server.link import (Kind, LinkClient, LinkConfig, LinkOptions, LinkServer, PeerRestarted)
from presence_ha.server.link.status import LinkDown, LinkStatus

log = logging.getLogger(__name__)

DIAL_ENV = "PRESENCE_HA_LINK_DIAL"
DEFAULT_OPTIONS = LinkOptions(window=1024, heartbeat_interval_s=1.0, dead_after_s=5.0,
                              handshake_timeout_s=5.0, connect_timeout_s=3.0,
                              backoff_initial_s=0.05, backoff_max_s=1.0)


@dataclass(frozen=True)
class PeerAddress:
    name: str
    host: str
    port: int


def dial_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """`{node: (host, port)}` from `PRESENCE_HA_LINK_DIAL` (empty if unset)."""
    result: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in environ.get(DIAL_ENV, "").split(","))):
        name, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        if not name or not host or not port.isdigit():
            raise ValueError(f"{DIAL_ENV}: {item!r} is not NODE=HOST:PORT")
        result[name] = (host.strip("[]"), int(port))
    return result


class LinkMesh:
    def __init__(self, node: str, secret: bytes, listen: tuple[str, int], peers: list[PeerAddress], *,
                 on_frame: Callable[[str, Kind, bytes], None], on_restarted: Callable[[str], None],
                 now: Callable[[], float], options: LinkOptions = DEFAULT_OPTIONS,
                 environ: Mapping[str, str] = os.environ) -> None:
        names = frozenset(p.name for p in peers)
        self.config = LinkConfig(node, secret, os.urandom(16), allowed_peers=names)
        self._on_frame, self._on_restarted, self._now = on_frame, on_restarted, now
        self._listen, self._options = listen, options
        self._server: LinkServer | None = None
        overrides = dial_overrides(environ)
        self.channels: dict[str, PeerChannel] = {}
        self._clients: list[LinkClient] = []
        for peer in peers:
            host, port = overrides.get(peer.name, (peer.host, peer.port))
            client = LinkClient(self.config, peer.name, host, port, on_frame=on_frame, rng=random.Random(),
                                on_up=self._client_up, on_down=self._client_down, options=options)
            self._clients.append(client)
            self.channels[peer.name] = PeerChannel(peer.name, client, now)

    async def start(self) -> None:
        host, port = self._listen
        self._server = LinkServer(self.config, host, port, on_frame=self._on_frame,
                                  on_up=self._server_up, on_down=self._server_down, options=self._options)
        await self._server.start()
        for client in self._clients:
            client.start()
        log.info("cluster links of %s: listening on %s:%d, dialing %s", self.config.local_name, host, port,
                 ", ".join(sorted(self.channels)) or "nobody")

    @property
    def heartbeat_interval_s(self) -> float:
        return self._options.heartbeat_interval_s

    def channel(self, peer: str) -> PeerChannel | None:
        return self.channels.get(peer)

    def peers_up(self) -> list[str]:
        return sorted(name for name, channel in self.channels.items() if channel.up)

    def unreachable_for(self, peer: str) -> float:
        """Seconds the peer has been unreachable: our link to it down, and its link to
        us down too (a peer that dialled us is alive; our redial will follow)."""
        channel = self.channels.get(peer)
        if channel is None or peer in self.peers_in():
            return 0.0
        return channel.down_for()

    def peers_in(self) -> frozenset[str]:
        """Peers whose own link to this node is up (they can send to us)."""
        return self._server.peers_up if self._server is not None else frozenset()

    def _client_up(self, status: LinkStatus) -> None:
        self.channels[status.peer_name].mark_up()
        if isinstance(status, PeerRestarted):
            self._on_restarted(status.peer_name)

    def _client_down(self, status: LinkDown) -> None:
        if status.peer_name in self.channels:
            self.channels[status.peer_name].mark_down()

    def _server_up(self, status: LinkStatus) -> None:
        if isinstance(status, PeerRestarted):
            self._on_restarted(status.peer_name)

    def _server_down(self, status: LinkDown) -> None:
        log.debug("inbound link of %s: %s", self.config.local_name, status)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until what was sent to reachable peers is acknowledged."""
        deadline = self._now() + timeout_s
        while self._now() < deadline and any(
            c.up and (c.backlog or client.in_flight) for c, client in zip(self.channels.values(), self._clients)
        ):
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for client in self._clients:
            await client.close()
        if self._server is not None:
            await self._server.close()
