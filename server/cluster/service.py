"""The cluster component of a node: links, location cache, remote routing, relay.

Rules of this module:
- `ClusterService.start(...)` reads the cluster's nodes, opens the link mesh, installs
  the router's remote-route hook and the client port's relay hooks. `stop()` drains
  what was sent (bounded), then closes the links; call it after the client port's
  shutdown, so the contacts of ending sessions still get unavailable presence.
- Frames from peers are decoded here (`wire`), then run in the `Inbox`, keyed by
  recipient account or relayed session. A bad frame is logged and dropped.
- Every `refresh_s` the location cache checks the move fingerprint; when users moved
  it tells the peers (CONTROL `moved`) so they forget their cached locations too.
  The same loop ends relayed sessions whose peer stayed unreachable for
  `relay_timeout_s`.
- When users moved (the SRM here, or a peer's `moved`), locations are reloaded in one
  read, and what was sent to a peer that is down and never acknowledged is taken
  back and routed again (`channel.reclaim`): a stanza acknowledged to its sender is
  not lost with the node it was going to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from presence_ha.db import groups, nodes, users
from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.db.hotpath import HotPath
from presence_ha.server.cluster import wire
from presence_ha.server.cluster.inbox import Inbox
from presence_ha.server.cluster.links import LinkMesh, PeerAddress
from presence_ha.server.cluster.locations import LocationCache
from presence_ha.server.cluster.relay import RelayDialer, RelayHost
from presence_ha.server.cluster.routing import (ClusterRoute, decode_routed, deliver_routed, deliver_routed_frame,
                                    deliver_routed_now, recipient_key, routed_frame_key)
from presence_ha.server.cluster.sm_mirror import ReplicationSettings, SmReplication
from presence_ha.server.context import FeatureContext
from presence_ha.server.link import Kind

log = logging.getLogger(__name__)
ACTIVATION_WAIT_S = 2.0  # users moved here: longest wait for their activation before re-routing


@dataclass(frozen=True)
class ClusterTimers:
    grace_s: float = 3.0  # a peer down longer than this is unreachable for new stanzas
    relay_timeout_s: float = 10.0  # relayed sessions end after their peer is gone this long
    refresh_s: float = 1.0  # move-fingerprint check period
    location_ttl_s: float = 10.0


def _log_reload_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("cannot reload user locations: %r", future.exception())


class ClusterService:
    def __init__(self, ctx: FeatureContext, port: Any, session_factory: Any, hot: HotPath,
                 timers: ClusterTimers = ClusterTimers()) -> None:
        self.ctx, self.port, self._db, self._hot, self.timers = ctx, port, session_factory, hot, timers
        self.locations = LocationCache(self._load_location, self._fingerprint, time.monotonic, timers.location_ttl_s,
                                       load_all=self._load_all_locations)
        self.inbox = Inbox()
        self.mesh: LinkMesh | None = None
        self.route: ClusterRoute | None = None
        self.dialer: RelayDialer | None = None
        self.host: RelayHost | None = None
        self.replicas: SmReplication | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost: set[str] = set()  # peers whose relayed sessions were ended this outage
        self._arrival: asyncio.TimerHandle | None = None  # users arrived here, not yet active...
        self._arrived: asyncio.Future[None] | None = None  # ...and what stanzas for them wait on

    async def _load_location(self, username: str) -> str | None:
        return await self._hot.run(users.active_node_of, username)

    async def _load_all_locations(self) -> dict[str, str | None]:
        async with self._db() as session:
            return await users.active_nodes(session)

    async def _fingerprint(self) -> int:
        async with self._db() as session:
            return sum(group.epoch for group in await groups.list_groups(session))

    async def start(self, node: nodes.NodeInfo, secret: bytes, listen_host: str) -> None:
        async with self._db() as session:
            peers = [PeerAddress(n.name, n.host, n.ports.link_port)
                     for n in await nodes.list_nodes(session) if n.name != node.name]
        self.mesh = LinkMesh(node.name, secret, (listen_host, node.ports.link_port), peers,
                             on_frame=self._on_frame, on_restarted=self._on_restarted, now=time.monotonic)
        self.route = ClusterRoute(node.name, self.locations, self.mesh, self.timers.grace_s,
                                  arrival=lambda: self._arrived)
        self.dialer = RelayDialer(self.mesh, self.timers.grace_s)
        self.host = RelayHost(self.ctx, self.port, self.mesh, self.locations)
        self.replicas = self._replication(node.name)
        await self.mesh.start()
        self.ctx.router.remote = self.route
        self.port.relay, self.port.hosted = self.dialer, self.host
        await self.replicas.start()
        self.port.replicas = self.replicas
        self._task = asyncio.create_task(self._maintain())

    def _replication(self, name: str) -> SmReplication:
        """XEP-0198 state of this node's sessions, copied to their backup (sm_mirror)."""
        async def load_backup() -> str | None:
            async with self._db() as session:
                group = await groups.group_of_node(session, name)
                peer = await groups.peer_of(session, name)
            return peer if group is not None and group.ha_enabled else None

        return SmReplication(self.ctx, self.port, self.mesh, name, load_backup, ReplicationSettings.from_env())

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.replicas is not None:
            await self.replicas.stop()
        await self.inbox.drain(timeout_s)
        if self.mesh is not None:
            await self.mesh.drain(timeout_s)
            await self.mesh.close()
        await self.inbox.close()

    # -- frames from peers -------------------------------------------------------------
    def _on_frame(self, peer: str, kind: Kind, payload: bytes) -> asyncio.Future | str | None:
        """Routed stanzas return their delivery's future: the link acknowledges them
        once delivered here (a node that dies with them unacknowledged loses nothing;
        the sender takes them back, `_reroute_unreachable`). Other stanzas return
        `inbox.QUEUED` when their work waits (the link then yields before decoding more)."""
        try:
            if kind is Kind.STANZA:
                if self.inbox.empty and payload.startswith(wire.ROUTED_PREFIX):  # its turn is now: no key needed
                    return self._routed_now(peer, None, payload)
                key = routed_frame_key(payload)
                if key is not None and self.inbox.idle(key):  # its turn is now
                    return self._routed_now(peer, key, payload)
                if key is not None:  # parsed in its turn (routing.py)
                    return self.inbox.submit(key, lambda: deliver_routed_frame(self.ctx, peer, payload), tracked=True)
                return self._on_stanza(peer, wire.decode_stanza(payload))
            if kind is Kind.CONTROL:
                self._on_control(peer, wire.decode_control(payload))
        except wire.WireError as exc:
            log.warning("dropped a frame from node %s: %s", peer, exc)
        return None

    def _routed_now(self, peer: str, key: str | None, payload: bytes) -> asyncio.Future | str | None:
        """A routed frame whose recipient has nothing queued: parsed and, in the common
        case, delivered now (routing.py). A failure is logged like a failed inbox item:
        it must not reach the link, which would reset the connection. `key`: its inbox
        key, if known (else read from the stanza, if it must be queued after all)."""
        stanza = decode_routed(self.ctx, peer, payload)
        if stanza is None:
            return None
        try:
            if deliver_routed_now(self.ctx, stanza, payload):
                return None
        except Exception:  # noqa: BLE001 - as the inbox does with a failing item
            self.inbox.failures += 1
            log.exception("cluster: delivering a routed %s from %s failed", stanza.tag, peer)
            return None
        return self.inbox.submit(key or recipient_key(stanza), lambda: deliver_routed(self.ctx, stanza), tracked=True)

    def _on_stanza(self, peer: str, frame: wire.Routed | wire.SessionStanza) -> asyncio.Future | str | None:
        if isinstance(frame, wire.Routed):
            wire.check_origin(frame.stanza, self.ctx.domain)
            return self.inbox.submit(recipient_key(frame.stanza), lambda: deliver_routed(self.ctx, frame.stanza),
                                     tracked=True)
        if frame.upstream:
            return self.inbox.submit(("u", peer, frame.sid), lambda: self.host.upstream(peer, frame.sid, frame.stanza))
        return self.inbox.submit(("d", frame.sid), lambda: self._sync(self.dialer.downstream, frame.sid, frame.stanza))

    def _on_control(self, peer: str, control: wire.Control) -> None:
        sid, op = control.text("sid") or "", control.op
        if op is wire.Op.SM:  # applied at once, in link order (sm_mirror)
            self.replicas.received(peer, control.fields)
        elif op is wire.Op.SM_SYNCED:
            self.replicas.synced(peer, int(control.fields.get("seq", 0)))
        elif op is wire.Op.MOVED:
            self.locations.forget_all()
            self._reload_locations()
            self._reroute_unreachable()
        elif op is wire.Op.OPEN:
            self.inbox.submit(("u", peer, sid), lambda: self.host.open(peer, control))
        elif op is wire.Op.CLOSED:
            graceful = bool(control.fields.get("graceful", False))
            self.inbox.submit(("u", peer, sid), lambda: self.host.closed(peer, sid, graceful))
        elif op in (wire.Op.OPENED, wire.Op.REFUSED):
            reason = control.text("reason", "refused") if op is wire.Op.REFUSED else None
            self.inbox.submit(("d", sid), lambda: self._sync(self.dialer.answered, sid, reason))
        elif op is wire.Op.CLOSE:
            self.inbox.submit(("d", sid), lambda: self._sync(self.dialer.closed_by_host, sid, control))

    @staticmethod
    async def _sync(func, *args) -> None:
        func(*args)

    def _on_restarted(self, peer: str) -> None:
        """The peer is a new process: the relayed sessions shared with it are gone."""
        log.info("node %s restarted: ending the sessions relayed with it", peer)
        self.replicas.peer_restarted(peer)
        self.dialer.peer_lost(peer, "restarted")
        self.inbox.submit(("lost", peer), lambda: self.host.peer_lost(peer))

    # -- periodic upkeep -----------------------------------------------------------------
    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.timers.refresh_s)
            try:
                if await self.locations.refresh():
                    self._broadcast_moved()
            except DatabaseUnavailable as exc:
                log.warning("cannot refresh user locations: %s", exc)
            self._expire_relays()

    def users_moved(self, arrived: bool) -> None:
        """The SRM moved users (a committed takeover or fallback): forget every cached
        location now, before the SRM acts on the move. Users that left this node: take
        back what unreachable peers never acknowledged and tell the other nodes now.
        Users that `arrived` here: only once their sessions are active (`users_active`),
        or a stanza taken back would find them still inactive and go to offline storage
        (and a peer told early would route there as early)."""
        self.locations.forget_all()
        self._reload_locations()
        if self._arrival is not None:
            self._arrival.cancel()
        if arrived:
            loop = asyncio.get_running_loop()
            self._arrival = loop.call_later(ACTIVATION_WAIT_S, self.users_active)
            if self._arrived is None or self._arrived.done():
                self._arrived = loop.create_future()
            return
        self._arrival = None
        self._reroute_unreachable()
        self._broadcast_moved()

    def users_active(self) -> None:
        """The users that arrived are active here (the SRM activated their sessions), or
        the wait for that is over: route again what their old node never acknowledged,
        and tell the other nodes."""
        if self._arrival is None:
            return
        self._arrival.cancel()
        self._arrival = None
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        self._reroute_unreachable()
        self._broadcast_moved()

    def _reload_locations(self) -> None:
        """One bulk read of every user's node, begun now: lookups that miss meanwhile
        wait for it (`LocationCache.reload_soon`)."""
        future = self.locations.reload_soon()
        if future is not None:
            future.add_done_callback(_log_reload_failure)

    def _reroute_unreachable(self) -> None:
        """Stanzas sent to a peer whose link is down and never acknowledged by it are
        routed again, to wherever their recipients live now (here, after a takeover).
        Frames of relayed sessions are dropped: those sessions end with the peer."""
        silent_s = 2 * self.mesh.heartbeat_interval_s  # a live peer sends a keepalive every interval
        for name, channel in self.mesh.channels.items():
            frames = channel.reclaim(silent_s)
            rerouted = 0
            for kind, payload in frames:
                if kind is not Kind.STANZA:
                    continue
                try:
                    frame = wire.decode_stanza(payload)
                except wire.WireError:
                    continue
                if isinstance(frame, wire.Routed):
                    rerouted += 1
                    self.inbox.submit(recipient_key(frame.stanza),
                                      lambda stanza=frame.stanza: self.ctx.router.deliver(self.ctx, stanza))
            if frames:
                log.info("node %s is down: %d unacknowledged frame(s) taken back, %d stanza(s) routed again",
                         name, len(frames), rerouted)

    def _broadcast_moved(self) -> None:
        log.info("users moved: cached locations forgotten, peers told")
        for channel in self.mesh.channels.values():
            if channel.up:
                channel.post(Kind.CONTROL, wire.encode_control(wire.Op.MOVED))

    def _expire_relays(self) -> None:
        for name in self.mesh.channels:
            down_for = self.mesh.unreachable_for(name)
            if down_for <= self.timers.relay_timeout_s:
                self._lost.discard(name)
            elif name not in self._lost:
                self._lost.add(name)
                log.info("node %s unreachable for %.0fs: ending relayed sessions", name, down_for)
                self.dialer.peer_lost(name, "is unreachable")
                self.inbox.submit(("lost", name), lambda name=name: self.host.peer_lost(name))

    def status(self) -> dict[str, Any]:
        return {
            "peers_up": self.mesh.peers_up() if self.mesh else [],
            "routed": self.route.routed if self.route else 0,
            "relayed_out": self.dialer.count() if self.dialer else 0,
            "relayed_in": self.host.count() if self.host else 0,
            "sm_replication": self.replicas.status() if self.replicas else {},
        }
