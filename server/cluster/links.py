"""The node-to-node link mesh: one `LinkServer` here, one `LinkClient` to each peer.

Rules of this module:
- Every node of the cluster keeps an authenticated, persistent link to every other
  node: it listens on its `link_port` (peers dial in and send to it) and dials each
  peer's `link_port` (it sends there, through that peer's `PeerChannel`). Links use
  the cluster secret from the database; only the cluster's node names are accepted.
  With `tls` (the default, `links.tls`) they run over TLS 1.3, both sides presenting a
  certificate of the cluster CA that names their node (`server.link.secure`).
  Redial is the link library's backoff.
- Options come from the node's configuration (`links` section: `link_options`);
  `links.dial` ("n2=host:port,...", or `PRESENCE_HA_LINK_DIAL`) dials a peer at another
  address than its registered one (a tunnel, NAT, or a fault-injection proxy in tests).
- Built before the router (whose remote route sends through it), started with the
  frame handler: `start(on_frame, on_restarted)`. Frames go to
  `on_frame(peer, kind, payload)`; link facts to `on_restarted(peer)` (the peer is a
  new process: whatever it held is gone) and to the channels' up/down marks.
  Callbacks must not raise (the link library resets on a raise). Until `start` there
  are no channels: nothing is sent to, or expected from, a peer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from presence_ha.server.cluster.channel import PeerChannel
from presence_ha.server.config import LinksConfig
from presence_ha.server.link import Kind, LinkClient, LinkConfig, LinkOptions, LinkServer, PeerRestarted
from presence_ha.server.link.secure import LinkTls
from presence_ha.server.link.status import LinkDown, LinkStatus

log = logging.getLogger(__name__)

FrameHandler = Callable[[str, Kind, bytes], object]  # what it returns goes to the link (endpoint.py)


def link_options(config: LinksConfig) -> LinkOptions:
    """The link library's options from the `links` configuration section."""
    return LinkOptions(window=config.window, heartbeat_interval_s=config.heartbeat_interval_s,
                       dead_after_s=config.dead_after_s, handshake_timeout_s=config.handshake_timeout_s,
                       connect_timeout_s=config.connect_timeout_s, backoff_initial_s=config.backoff_initial_s,
                       backoff_max_s=config.backoff_max_s, ack_delay_s=config.ack_delay_s)


DEFAULT_OPTIONS = link_options(LinksConfig())


@dataclass(frozen=True)
class PeerAddress:
    name: str
    host: str
    port: int


def _nobody(_peer: str) -> None:
    """`on_restarted` before `start`: no link is up yet."""


class LinkMesh:
    def __init__(self, node: str, secret: bytes, listen: tuple[str, int], peers: list[PeerAddress], *,
                 now: Callable[[], float], options: LinkOptions = DEFAULT_OPTIONS,
                 dial: Mapping[str, tuple[str, int]] | None = None, tls: LinkTls | None = None) -> None:
        names = frozenset(p.name for p in peers)
        self.config = LinkConfig(node, secret, os.urandom(16), allowed_peers=names)
        self._now, self._listen, self._options, self._tls = now, listen, options, tls
        self._peers, self._dial = list(peers), dict(dial or {})
        self._on_restarted: Callable[[str], None] = _nobody
        self._server: LinkServer | None = None
        self.channels: dict[str, PeerChannel] = {}
        self._clients: list[LinkClient] = []

    async def start(self, on_frame: FrameHandler, on_restarted: Callable[[str], None]) -> None:
        """Listen, and dial every peer; frames and restarts go to the given handlers."""
        self._on_restarted = on_restarted
        for peer in self._peers:
            host, port = self._dial.get(peer.name, (peer.host, peer.port))
            client = LinkClient(self.config, peer.name, host, port, on_frame=on_frame, rng=random.Random(),
                                on_up=self._client_up, on_down=self._client_down, options=self._options,
                                tls=self._tls)
            self._clients.append(client)
            self.channels[peer.name] = PeerChannel(peer.name, client, self._now)
        host, port = self._listen
        self._server = LinkServer(self.config, host, port, on_frame=on_frame,
                                  on_up=self._server_up, on_down=self._server_down, options=self._options,
                                  tls=self._tls)
        await self._server.start()
        for client in self._clients:
            client.start()
        log.info("cluster links of %s: listening on %s:%d (%s), dialing %s", self.config.local_name, host, port,
                 "TLS 1.3, cluster CA" if self._tls else "no TLS", ", ".join(sorted(self.channels)) or "nobody")

    def set_secret(self, secret: bytes) -> None:
        """New links authenticate with `secret` (a rotated cluster secret); links up stay up."""
        self.config = dataclasses.replace(self.config, secret=secret)
        for endpoint in (self._server, *self._clients):
            if endpoint is not None:
                endpoint.set_secret(secret)

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
            c.up and (c.backlog or client.in_flight)
            for c, client in zip(self.channels.values(), self._clients, strict=True)
        ):
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for client in self._clients:
            await client.close()
        if self._server is not None:
            await self._server.close()
