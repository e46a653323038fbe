"""The SRM's channel to its peer's SRM, on the node link library (SPEC §6).

Rules of this module:
- This node's `LinkServer` on the SRM port receives; its `LinkClient`, dialing the
  peer's SRM port, sends. Heartbeats are unreliable HEARTBEAT frames (a stale one is
  worthless), every other message a reliable CONTROL frame, encoded by
  `peer_protocol`.
- What arrives is decoded and posted to the SRM inbox as is. A malformed message is
  logged and counted; a message meant for an earlier process of this node is dropped.
- With `SrmPort.tls` (the default, `links.tls`) the link runs over TLS 1.3, both sides
  presenting a certificate of the cluster CA that names their node (`server.link.secure`).
- A refused dial is `PeerConnectionRefused` (the peer process is gone: take over at
  once); silence waits for the machine's heartbeat timeout. When the link comes up,
  this node's heartbeat goes out at once, not an interval later.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from presence_ha.db.nodes import NodeInfo
from presence_ha.server.link import Kind, LinkClient, LinkConfig, LinkOptions, LinkServer, PeerRefused
from presence_ha.server.link.secure import LinkTls
from presence_ha.server.link.status import LinkDown, LinkStatus
from presence_ha.server.srm import peer_protocol
from presence_ha.server.srm.events import HeartbeatReceived, PeerConnectionRefused, PeerMessage
from presence_ha.server.srm.inbox import SrmInbox
from presence_ha.server.srm.machine import SrmTimers

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.02  # how often `drain` looks whether the peer acknowledged everything


class CounterLike(Protocol):
    def inc(self, amount: float = 1) -> None: ...


def link_options(t: SrmTimers) -> LinkOptions:
    """Link timings from the SRM's timers: a dead link is noticed within the heartbeat timeout."""
    beat = min(1.0, t.heartbeat_interval_s / 2)
    return LinkOptions(heartbeat_interval_s=beat, dead_after_s=float(t.heartbeat_timeout_s),
                       handshake_timeout_s=min(5.0, t.heartbeat_timeout_s),
                       connect_timeout_s=min(5.0, t.heartbeat_timeout_s),
                       backoff_initial_s=0.05, backoff_max_s=min(1.0, t.heartbeat_interval_s))


class PeerChannel:
    """`open` the SRM port and dial the peer; `send` messages; `drain`; `close`."""

    def __init__(self, node: str, secret: bytes, session_id: bytes, inbox: SrmInbox, protocol_errors: CounterLike,
                 heartbeat: Callable[[], HeartbeatReceived | None], tls: LinkTls | None = None) -> None:
        self._node, self._secret, self._session_id = node, secret, session_id
        self._inbox, self._errors, self._heartbeat, self._tls = inbox, protocol_errors, heartbeat, tls
        self._server: LinkServer | None = None
        self._client: LinkClient | None = None
        self._peer_session: bytes | None = None

    async def open(self, host: str, port: int, peer: NodeInfo | None, timers: SrmTimers) -> None:
        allowed = frozenset({peer.name}) if peer else frozenset()
        config = LinkConfig(self._node, self._secret, self._session_id, allowed_peers=allowed)
        self._server = LinkServer(config, host, port, on_frame=self._on_frame, options=link_options(timers),
                                  tls=self._tls)
        await self._server.start()
        if peer is not None:
            self._client = LinkClient(
                config, peer.name, peer.host, peer.ports.srm_port, on_frame=self._on_frame, rng=random.Random(),
                on_up=self._on_up, on_down=self._on_down, options=link_options(timers), tls=self._tls)
            self._client.start()

    def set_secret(self, secret: bytes) -> None:
        """New connections to and from the peer authenticate with `secret`; the one up stays."""
        self._secret = secret
        for endpoint in (self._server, self._client):
            if endpoint is not None:
                endpoint.set_secret(secret)

    @property
    def up(self) -> bool:
        """The link to the peer's SRM is established now (the peer process is alive)."""
        return self._client is not None and self._client.is_up

    async def send(self, msg: PeerMessage) -> None:
        if self._client is None:
            return
        payload = peer_protocol.encode(msg, self._peer_session)
        if isinstance(msg, HeartbeatReceived):
            self._client.send_heartbeat(payload)  # unreliable: a stale heartbeat is worthless
        else:
            await self._client.send(Kind.CONTROL, payload)

    async def drain(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) until the peer acknowledged what was sent."""
        deadline = time.monotonic() + timeout_s
        client = self._client
        while client is not None and client.is_up and client.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)

    async def close(self) -> None:
        for endpoint in (self._client, self._server):
            if endpoint is not None:
                await endpoint.close()

    def _on_frame(self, peer: str, kind: Kind, payload: bytes) -> None:
        try:
            envelope = peer_protocol.decode(payload)
        except peer_protocol.PeerProtocolError as exc:
            log.warning("srm %s: protocol error from %s: %s", self._node, peer, exc)
            self._errors.inc()
            return
        if not envelope.for_me(self._session_id):
            log.info("srm %s: dropped %s meant for an earlier process", self._node, type(envelope.msg).__name__)
            return
        self._inbox.post(envelope.msg)

    def _on_up(self, status: LinkStatus) -> None:
        self._peer_session = status.peer_session_id
        heartbeat = self._heartbeat()
        if self._client is not None and heartbeat is not None:  # announce our state now, not in 15 s
            self._client.send_heartbeat(peer_protocol.encode(heartbeat, self._peer_session))

    def _on_down(self, status: LinkDown) -> None:
        if isinstance(status, PeerRefused):
            self._inbox.post(PeerConnectionRefused())
