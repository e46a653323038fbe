"""The cluster component of a node: links, location cache, remote routing, relay.

Rules of this module:
- Built in two steps, in dependency order (`server.node`): `ClusterLinks` first (the
  link mesh, the location cache and the router's remote route: what needs no
  `FeatureContext`), then, once the context and the client port exist,
  `ClusterService` (relay host, XEP-0198 replication, frames from peers).
  `start()` opens the link mesh with this service's frame handler. `stop()` drains
  what was sent (bounded), then closes the links; call it after the client port's
  shutdown, so the contacts of ending sessions still get unavailable presence.
- What a frame from a peer becomes is decided once (`triage`); `_on_frame` executes
  that: delivered now, or run in the `Inbox`, keyed by recipient account or relayed
  session. A bad frame is logged and dropped.
- Every `refresh_s` the location cache checks the move fingerprint; when users moved
  it tells the peers (CONTROL `moved`) so they forget their cached locations too.
  The same loop ends relayed sessions whose peer stayed unreachable for
  `relay_timeout_s`.
- When users moved (the SRM here, or a peer's `moved`), locations are reloaded in one
  read, and what was sent to a peer that is down and never acknowledged is taken
  back and routed again (`channel.reclaim`): a stanza acknowledged to its sender is
  not lost with the node it was going to.
- Users that arrived here by a takeover: the relayed connections of theirs whose host
  died become local sessions on the same client streams (`RelayDialer.take_over`),
  available with their last presence as activation does (server.activation), before
  what the dead host never acknowledged is routed again, so it reaches them here.
- Timers and link options are the `cluster` and `links` sections of
  `server.config.NodeConfig`; XEP-0198 replication is its `sm_replication` section.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import groups, nodes, users
from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.db.hotpath import HotPath
from presence_ha.server.activation import ANNOUNCE_CONCURRENCY, announce, record_key, records_for, turn_active
from presence_ha.server.admission import LoginAdmission, ServiceSwitch
from presence_ha.server.cluster import wire
from presence_ha.server.cluster.arrivals import Arrivals
from presence_ha.server.cluster.inbox import DownstreamKey, Inbox, PeerLostKey, RecipientKey, UpstreamKey
from presence_ha.server.cluster.links import LinkMesh, PeerAddress, link_options
from presence_ha.server.cluster.locations import LocationCache
from presence_ha.server.cluster.relay import HostedBinder, HostedSessions, RelayDialer, RelayHost
from presence_ha.server.cluster.routing import ClusterRoute, decode_routed, deliver_routed, deliver_routed_now
from presence_ha.server.cluster.sm_mirror import SmReplication
from presence_ha.server.cluster.sm_replica import stanza_key
from presence_ha.server.cluster.triage import Verdict, recipient_key, triage
from presence_ha.server.config import NodeConfig
from presence_ha.server.context import FeatureContext
from presence_ha.server.link import Kind
from presence_ha.server.link.secure import LinkTls
from presence_ha.server.sessions import Session

log = logging.getLogger(__name__)
SessionFactory = async_sessionmaker[AsyncSession]


def _log_reload_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("cannot reload user locations: %r", future.exception())


async def load_peers(db: SessionFactory, node: str) -> list[PeerAddress]:
    """The other nodes of the cluster, as registered in the database."""
    async with db() as session:
        return [PeerAddress(n.name, n.host, n.ports.link_port)
                for n in await nodes.list_nodes(session) if n.name != node]


def _location_cache(db: SessionFactory, hot: HotPath, ttl_s: float) -> LocationCache:
    async def load(username: str) -> str | None:
        return await hot.run(users.active_node_of, username)

    async def load_all() -> dict[str, str | None]:
        async with db() as session:
            return await users.active_nodes(session)

    async def fingerprint() -> int:
        async with db() as session:
            return await groups.epoch_sum(session)

    return LocationCache(load, fingerprint, time.monotonic, ttl_s, load_all=load_all)


class ClusterLinks:
    """What the router and the client port need of the cluster before the rest of it:
    the link mesh (not started), the location cache, the remote route, the relay
    dialer, and the users arriving here (read by the route, settled by the service)."""

    def __init__(self, node: str, secret: bytes, listen: tuple[str, int], peers: list[PeerAddress],
                 config: NodeConfig, db: SessionFactory, hot: HotPath, tls: LinkTls | None = None) -> None:
        self.node, self.db, self.config, self.timers = node, db, config, config.cluster
        self.locations = _location_cache(db, hot, self.timers.location_ttl_s)
        self.mesh = LinkMesh(node, secret, listen, peers, now=time.monotonic, options=link_options(config.links),
                             dial=config.links.dial_addresses, tls=tls)
        self.arrivals = Arrivals()
        self.route = ClusterRoute(node, self.locations, self.mesh, self.timers.grace_s, self.arrivals)
        self.dialer = RelayDialer(self.mesh, self.timers.grace_s, self.timers.relay_open_timeout_s)

    def replication(self, ctx: FeatureContext) -> SmReplication:
        """XEP-0198 state of this node's sessions, copied to their backup (sm_mirror)."""
        db, name = self.db, self.node

        async def load_backup() -> str | None:
            async with db() as session:
                group = await groups.group_of_node(session, name)
                peer = await groups.peer_of(session, name)
            return peer if group is not None and group.ha_enabled else None

        return SmReplication(ctx, self.mesh, name, load_backup, self.config.sm_replication)

    def hosted_sessions(self, ctx: FeatureContext) -> HostedSessions:
        return HostedSessions(ctx, self.mesh)


class ClusterService:
    def __init__(self, ctx: FeatureContext, links: ClusterLinks, hosted: HostedSessions, replicas: SmReplication,
                 binder: HostedBinder, admission: LoginAdmission | None, presence: ServiceSwitch) -> None:
        self.ctx, self.timers = ctx, links.timers
        self.mesh, self.locations, self.route, self.dialer = links.mesh, links.locations, links.route, links.dialer
        self.arrivals, self.replicas = links.arrivals, replicas
        self.host = RelayHost(ctx, hosted, binder, links.mesh, links.locations, admission, presence)
        self.hosted = hosted
        self.inbox = Inbox()
        self._task: asyncio.Task[None] | None = None
        self._lost: set[str] = set()  # peers whose relayed sessions were ended this outage
        self._taking_over: asyncio.Task[None] | None = None  # relayed connections becoming local (a takeover)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.mesh.start(self._on_frame, self._on_restarted)
        await self.replicas.start()
        self._task = asyncio.create_task(self._maintain())

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.replicas.stop()
        await self.inbox.drain(timeout_s)
        await self.mesh.drain(timeout_s)
        await self.mesh.close()
        await self.inbox.close()

    # -- frames from peers -------------------------------------------------------------
    def _on_frame(self, peer: str, kind: Kind, payload: bytes) -> asyncio.Future[None] | str | None:
        """Executes the frame's `triage`. Routed stanzas return their delivery's future:
        the link acknowledges them once delivered here (a node that dies with them
        unacknowledged loses nothing; the sender takes them back, `_reroute_unreachable`).
        Other stanzas return `inbox.QUEUED` when their work waits (the link then yields
        before decoding more)."""
        verdict, key = triage(kind, payload, self.inbox)
        try:
            if verdict is Verdict.DELIVER_NOW:
                return self._routed_now(peer, payload, key)
            if verdict is Verdict.QUEUE:  # parsed in its turn
                assert key is not None
                return self.inbox.submit(key, lambda: self._routed_later(peer, payload), tracked=True)
            if verdict is Verdict.QUEUE_PARSED:
                stanza = decode_routed(self.ctx, peer, payload)
                if stanza is None:
                    return None
                return self.inbox.submit(recipient_key(stanza), lambda: deliver_routed(self.ctx, stanza), tracked=True)
            if verdict is Verdict.SESSION:
                return self._on_session_stanza(peer, wire.decode_session(payload))
            if verdict is Verdict.CONTROL:
                self._on_control(peer, wire.decode_control(payload))
        except wire.WireError as exc:
            log.warning("dropped a frame from node %s: %s", peer, exc)
        return None

    def _routed_now(self, peer: str, payload: bytes, key: RecipientKey | None) -> asyncio.Future[None] | str | None:
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
        except Exception:
            self.inbox.failures += 1
            log.exception("cluster: delivering a routed %s from %s failed", stanza.tag, peer)
            return None
        return self.inbox.submit(key or recipient_key(stanza), lambda: deliver_routed(self.ctx, stanza), tracked=True)

    async def _routed_later(self, peer: str, payload: bytes) -> None:
        """A routed frame whose turn came: decoded now; a bad one is logged and dropped."""
        stanza = decode_routed(self.ctx, peer, payload)
        if stanza is not None:
            await deliver_routed(self.ctx, stanza)

    def _on_session_stanza(self, peer: str, frame: wire.SessionStanza) -> asyncio.Future[None] | str:
        if frame.upstream:
            return self.inbox.submit(UpstreamKey(peer, frame.sid),
                                     lambda: self.host.upstream(peer, frame.sid, frame.stanza))
        return self.inbox.submit(DownstreamKey(frame.sid),
                                 lambda: _now(self.dialer.downstream, frame.sid, frame.stanza))

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
            self.inbox.submit(UpstreamKey(peer, sid), lambda: self.host.open(peer, control))
        elif op is wire.Op.CLOSED:
            graceful = bool(control.fields.get("graceful", False))
            self.inbox.submit(UpstreamKey(peer, sid), lambda: self.host.closed(peer, sid, graceful))
        elif op in (wire.Op.OPENED, wire.Op.REFUSED):
            reason = control.text("reason", "refused") if op is wire.Op.REFUSED else None
            self.inbox.submit(DownstreamKey(sid), lambda: _now(self.dialer.answered, sid, reason))
        elif op is wire.Op.CLOSE:
            self.inbox.submit(DownstreamKey(sid), lambda: _now(self.dialer.closed_by_host, sid, control))

    def _on_restarted(self, peer: str) -> None:
        """The peer is a new process: the relayed sessions shared with it are gone."""
        log.info("node %s restarted: ending the sessions relayed with it", peer)
        self.replicas.peer_restarted(peer)
        self.dialer.peer_lost(peer, "restarted")
        self.inbox.submit(PeerLostKey(peer), lambda: self.host.peer_lost(peer))

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
        if arrived:
            self.arrivals.expect(self.timers.activation_wait_s, self.users_active)
            if self.dialer.count():
                self._taking_over = asyncio.ensure_future(self._take_over_relayed())
            return
        self.arrivals.cancel()
        self._reroute_unreachable()
        self._broadcast_moved()

    def users_active(self) -> None:
        """The users that arrived are active here (the SRM activated their sessions), or
        the wait for that is over: route again what their old node never acknowledged,
        and tell the other nodes. Relayed connections still becoming local sessions
        (`_take_over_relayed`) are waited for: what is routed again reaches them."""
        taking_over = self._taking_over
        if taking_over is not None and not taking_over.done():
            taking_over.add_done_callback(lambda _task: self.users_active())
            return
        if not self.arrivals.settle():
            return
        self._reroute_unreachable()
        self._broadcast_moved()

    async def _take_over_relayed(self) -> None:
        """The relayed connections of users served here now, whose host is unreachable,
        become local sessions (`RelayDialer.take_over`); each is available with its last
        presence at once (`turn_active`), announced afterwards, as activation does."""
        wait_s = self.timers.activation_wait_s
        try:
            served = await asyncio.wait_for(self.ctx.store.usernames_active_on(self.ctx.node_name), wait_s)
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.warning("cannot take relayed sessions over: %r", exc)
            return
        try:
            sessions = await self.dialer.take_over(served)
        except Exception:  # a bug must not hold back what users_active routes again
            log.exception("taking relayed sessions over failed")
            return
        if not sessions:
            return
        try:
            records = await asyncio.wait_for(records_for(self.ctx, sessions), wait_s)
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.warning("relayed sessions taken over without their presence: %r", exc)
            records = {}
        for session in sessions:
            turn_active(session, records.get(record_key(session)))
        log.info("took over %d relayed session(s) whose node is unreachable", len(sessions))
        task = asyncio.ensure_future(self._announce(sessions))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, sessions: list[Session]) -> None:
        for i in range(0, len(sessions), ANNOUNCE_CONCURRENCY):
            await asyncio.gather(*(announce(self.ctx, s) for s in sessions[i:i + ANNOUNCE_CONCURRENCY]))

    def _reload_locations(self) -> None:
        """One bulk read of every user's node, begun now: lookups that miss meanwhile
        wait for it (`LocationCache.reload_soon`)."""
        future = self.locations.reload_soon()
        if future is not None:
            future.add_done_callback(_log_reload_failure)

    def _reroute_unreachable(self) -> None:
        """Stanzas sent to a peer whose link is down and never acknowledged by it are
        routed again, to wherever their recipients live now (here, after a takeover).
        Frames of relayed sessions are dropped: those sessions end with the peer, unless
        their connection was taken over (`RelayDialer.take_over`): its stanzas the peer
        never acknowledged are handled here."""
        silent_s = 2 * self.mesh.heartbeat_interval_s  # a live peer sends a keepalive every interval
        for name, channel in self.mesh.channels.items():
            frames = channel.reclaim(silent_s)
            rerouted = sent_there = 0
            handled = self.replicas.store.handled(name) if frames else set()
            downstream: dict[str, list[ET.Element]] = {}  # sid -> what the peer never acknowledged
            for kind, payload in frames:
                if kind is not Kind.STANZA:
                    continue
                try:
                    frame = wire.decode_stanza(payload)
                except wire.WireError:
                    continue
                if isinstance(frame, wire.Routed):
                    if stanza_key(frame.stanza) in handled:  # its ack was on the way: a replica holds it
                        sent_there += 1
                        continue
                    rerouted += 1
                    self.inbox.submit(recipient_key(frame.stanza), self._deliver_later(frame.stanza))
                elif frame.upstream and self.dialer.replay_upstream(frame.sid, frame.stanza):
                    rerouted += 1
                elif not frame.upstream:
                    downstream.setdefault(frame.sid, []).append(frame.stanza)
            if not channel.up:  # hosted sessions of its clients that it replicated wait for their resumption
                for sid, session in self.hosted.of_peer(name).items():
                    if self.replicas.park(name, session, downstream.get(sid, [])):
                        self.hosted.forget(name, sid)
            if frames:
                log.info("node %s is down: %d unacknowledged frame(s) taken back, %d stanza(s) routed again, "
                         "%d it had sent to resumable sessions", name, len(frames), rerouted, sent_there)
        self.dialer.replayed()

    def _deliver_later(self, stanza: ET.Element) -> Callable[[], Awaitable[None]]:
        return lambda: self.ctx.router.deliver(self.ctx, stanza)

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
                self.inbox.submit(PeerLostKey(name), functools.partial(self.host.peer_lost, name))

    def status(self) -> dict[str, Any]:
        return {
            "peers_up": self.mesh.peers_up(),
            "routed": self.route.routed,
            "relayed_out": self.dialer.count(),
            "relayed_in": self.host.count(),
            "sm_replication": self.replicas.status(),
        }


async def _now(func: Callable[..., None], *args: Any) -> None:
    """A synchronous step as inbox work (it keeps its place in its key's order)."""
    func(*args)
