"""The SRM's asyncio adapter: feeds the machine, runs its timers, executes its actions.

Rules of this module:
- No protocol decisions: which state follows which event is `SrmMachine`'s job. The
  runner only turns the world into events (link status, peer messages, timers,
  database health, service health, admin requests) and actions into effects.
- One worker task handles one queued item at a time and executes the returned actions
  strictly in order (database writes before messages, STYLE §3). Effects report back
  through the queue (`UsersMoved`, `CriticalServicesRestored`, `PeerDeadInDatabase`...).
- Timers carry a generation: a timer cancelled or restarted after it fired is dropped.
- The peer channel is the node link library on the SRM port: this node's `LinkServer`
  receives, its `LinkClient` (dialing the peer's SRM port) sends. Heartbeats are
  unreliable HEARTBEAT frames, the other messages reliable CONTROL frames, encoded by
  `peer_protocol`. A refused dial is `PeerConnectionRefused` (the peer process is
  gone: take over at once); silence waits for the machine's heartbeat timeout.
- Database liveness (SPEC §9): every heartbeat interval this node renews its
  `alive_at` and samples the peer's. `CheckPeerLiveness` answers "alive" only if the
  peer's `alive_at` changed recently by this node's monotonic clock (no clock skew),
  so a peer that lost the link but reaches the database is never taken over.
- `InvalidTransition` is logged, counted and fed back as `InternalErrorOccurred`.
- Each transition is one log line: node, from, to, reason, event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from presence_ha.db import groups, nodes, parameters, srm_state, users
from presence_ha.db.engine import WRITES, DatabaseUnavailable
from presence_ha.db.errors import FencingConflict
from presence_ha.server.auth import host_port
from presence_ha.server.link import Kind, LinkClient, LinkConfig, LinkOptions, LinkServer, PeerRefused
from presence_ha.server.loop_lag import LoopLag
from presence_ha.server.services import CriticalServices, StopCause
from presence_ha.server.sessions import SessionRegistry
from presence_ha.server.srm import peer_protocol
from presence_ha.server.srm.handover import Handover
from presence_ha.server.srm.actions import (
    Action, ActivateInactiveSessions, CancelTimer, CheckPeerLiveness, ClientKind, DisconnectClients, MoveUsers,
    NotifyPeer, PersistState, RefuseAdminRequest, StartCriticalServices, StartTimer, StopCriticalServices,
)
from presence_ha.server.srm.events import (
    DbRestored, DbUnavailable, Event, HeartbeatReceived, InternalErrorOccurred, MoveUsersFailed,
    NodeShuttingDown, PeerAliveInDatabase, PeerConnectionRefused, PeerDeadInDatabase, SrmStarted, Timer,
    TimerFired, UsersMoved,
)
from presence_ha.server.srm.machine import SrmMachine, SrmTimers
from presence_ha.server.srm.table import InvalidTransition, NodeState, Reason
from presence_ha.server.xmpp.errors import StreamCondition, StreamError
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0  # how long closing client streams may take
GOODBYE_TIMEOUT_S = 2.0  # how long a shutting-down node waits for the peer's ack
DB_SLOW_CHECKS = 2  # database checks in a row over their time limit that make a Database Failure
SATURATED_LAG_SHARE = 0.2  # a check whose loop ran this share of its limit late: the node is slow, not the database


@dataclass(frozen=True)
class SrmStatus:
    node: str
    group: str | None
    ha_enabled: bool
    state: NodeState
    reason: Reason
    peer: str | None
    peer_state: NodeState | None
    epoch: int


@dataclass(frozen=True)
class _Setup:
    """What the SRM reads from the database when it (re)starts."""

    group: str | None
    ha_enabled: bool
    peer: nodes.NodeInfo | None
    timers: SrmTimers
    monitor_auth: bool
    stored: srm_state.HaState | None
    epoch: int
    presence_grace_s: float = 30.0


LOGIN_SETTLE_S = 2.0  # how long a login waits for an Initializing SRM to decide, or a move
MOVING_IN = frozenset({NodeState.TAKING_OVER, NodeState.TAKING_BACK})  # users on their way here


@dataclass
class _Item:
    event: Event | None  # None: restart the machine
    reply: asyncio.Future[list[Action]] | None = None
    timer_gen: int | None = None
    machine_gen: int | None = None  # results of an action: only for the machine that asked



class _Unread:
    """`login_refusal`: the caller did not read the user's assigned node."""

class SrmRunner:
    """One node's SRM: `start`, `status`, `admin_request`, `restart`, `login_refusal`, `stop`."""

    def __init__(self, node: str, session_factory: Any, services: CriticalServices, clients: Any,
                 sessions: SessionRegistry, metrics: Any, secret: bytes, host: str, srm_port: int) -> None:
        self.node, self._db, self.services, self._clients = node, session_factory, services, clients
        self._sessions, self._metrics, self._secret = sessions, metrics, secret
        self._host, self._srm_port = host, srm_port
        self.session_id = os.urandom(16)  # this process, as the peer's messages address it
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._gen: dict[Timer, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._machine: SrmMachine | None = None
        self._machine_gen = 0  # bumped by every (re)install: stale action results are dropped
        self._setup: _Setup | None = None
        self._event: Event | None = None
        self._server: LinkServer | None = None
        self._client: LinkClient | None = None
        self._peer_session: bytes | None = None
        self._peer_alive: tuple[object, float] = (None, time.monotonic())
        self._peer_seen = False
        self._db_ok = True
        # Set by the node (cluster routing): users moved (True: here), and the arrived users' sessions are active.
        self.on_users_moved: Callable[[bool], None] = lambda _arrived: None
        self.on_users_active: Callable[[], None] = lambda: None
        self._handover = Handover(node, clients, self._spawn)
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Read the persisted state, open the SRM port, dial the peer, feed SrmStarted."""
        setup = await self._load()
        async with self._db() as session:  # create this node's row before two tasks may write it
            await srm_state.renew_alive(session, self.node)
        self._install(setup)
        self._post(SrmStarted(setup.epoch))
        allowed = frozenset({setup.peer.name}) if setup.peer else frozenset()
        config = LinkConfig(self.node, self._secret, self.session_id, allowed_peers=allowed)
        self._server = LinkServer(config, self._host, self._srm_port, on_frame=self._on_frame,
                                  options=self._link_options(setup.timers))
        await self._server.start()
        if setup.peer is not None:
            self._client = LinkClient(
                config, setup.peer.name, setup.peer.host, setup.peer.ports.srm_port, on_frame=self._on_frame,
                rng=random.Random(), on_up=self._on_link_up, on_down=self._on_link_down,
                options=self._link_options(setup.timers))
            self._client.start()
        self.services.on_health = self._post
        self._spawn(self._work())
        self._spawn(self._liveness())
        log.info("srm %s started: group %s, peer %s, HA %s, stored %s", self.node, setup.group,
                 setup.peer.name if setup.peer else None, "on" if setup.ha_enabled else "off",
                 setup.stored.state if setup.stored else "nothing")

    async def stop(self) -> None:
        """Clean shutdown: stop the services, tell the peer (PeerRebooted), close."""
        self._stopping = True  # from now on the peer's news and timers change nothing here
        if self._machine is not None and self._tasks:
            try:
                await asyncio.wait_for(self._submit(NodeShuttingDown()), CLOSE_TIMEOUT_S + GOODBYE_TIMEOUT_S)
            except TimeoutError:
                log.warning("srm %s: shutdown actions did not finish in time", self.node)
            await self._drain_link()
        self.services.on_health = lambda event: None
        for handle in self._timers.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for endpoint in (self._client, self._server):
            if endpoint is not None:
                await endpoint.close()

    async def restart(self) -> None:
        """Recovery (SPEC §7): rebuild the machine from the persisted state and restart it."""
        await self._submit(None)

    # --- API for the admin layer and the client port ---------------------------------

    def status(self) -> SrmStatus:
        m, s = self._machine, self._setup
        if m is None or s is None:
            raise RuntimeError("the SRM is not started")
        return SrmStatus(self.node, s.group, m.ha_enabled, m.state, m.reason, m.peer, m.peer_state, m.epoch)

    async def admin_request(self, event: Event) -> tuple[bool, str]:
        """Feed an admin request; (accepted, why) once its actions have run."""
        actions = await self._submit(event)
        refused = [a for a in actions if isinstance(a, RefuseAdminRequest)]
        m = self._machine
        assert m is not None
        if refused:
            return False, f"{type(event).__name__} is not allowed on {self.node} in state {refused[0].state.value}"
        return True, f"{self.node}: {m.state.value} / {m.reason.value}"

    async def login_refusal(self, username: str, assigned: str | None | type[_Unread] = _Unread) -> SaslFailure | None:
        """None if the SRM state lets `username` log in here (the machine's `serving`).
        `assigned`: the user's assigned node if the caller read it during this login."""
        await self._settle(LOGIN_SETTLE_S, lambda m: m.state is not NodeState.INITIALIZING)
        serving = self._machine.serving if self._machine is not None else frozenset()
        state = self._machine.state.value if self._machine is not None else "starting"
        if not serving:
            return SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, f"node {self.node} serves no users now ({state})")
        if assigned is _Unread:
            async with self._db() as session:
                location = await users.user_location(session, username)
            assigned = location[0] if location else None
        if assigned is not None and assigned not in serving and self._machine.state in MOVING_IN:
            # The users are moving here (the database may already say so): a login
            # that races the move waits for it rather than failing and retrying later.
            await self._settle(LOGIN_SETTLE_S, lambda m: m.state not in MOVING_IN)
            serving = self._machine.serving
        if assigned is not None and assigned not in serving:
            return SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, f"{username} is moving between nodes; retry later")
        return None

    async def _settle(self, timeout_s: float, settled: Callable[[SrmMachine], bool]) -> None:
        """Let a login that races the SRM wait briefly until `settled(machine)` (a fresh
        node is Initializing for milliseconds; a takeover moves users in as long) instead
        of failing at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._machine is None or not settled(self._machine):
            if loop.time() >= deadline:
                return
            await asyncio.sleep(0.02)

    def redirect(self, cause: StopCause = StopCause.SRM) -> StreamError:
        """The stream error for clients this node lets go: see-other-host to the peer."""
        peer = self._setup.peer if self._setup is not None and self._setup.ha_enabled else None
        if peer is None or cause is not StopCause.SRM:
            return StreamError(StreamCondition.SYSTEM_SHUTDOWN, f"node {self.node} stopped serving")
        return StreamError(StreamCondition.SEE_OTHER_HOST, f"served by {peer.name} now",
                           other_host=host_port(peer.host, peer.ports.client_port))

    # --- the worker --------------------------------------------------------------------

    def _post(self, event: Event) -> None:
        if self._stopping:
            return  # shutting down: the peer already takes over (e.g. its heartbeat saying so)
        self._queue.put_nowait(_Item(event))

    async def _submit(self, event: Event | None) -> list[Action]:
        reply: asyncio.Future[list[Action]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(event, reply))
        return await reply

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item.event is None:
                actions = await self._rebuild()
            elif isinstance(item.event, TimerFired) and item.timer_gen != self._gen.get(item.event.name):
                continue  # cancelled or restarted after it fired
            elif item.machine_gen is not None and item.machine_gen != self._machine_gen:
                log.info("srm %s: dropped %s meant for the machine before a restart", self.node, item.event)
                continue
            else:
                actions = self._handle(item.event)
            for action in actions:
                await self._execute(action)
            if item.reply is not None and not item.reply.done():
                item.reply.set_result(actions)  # after the actions: the admin sees their effect

    def _handle(self, event: Event) -> list[Action]:
        m = self._machine
        assert m is not None
        before = (m.state, m.reason)
        self._event = event
        try:
            actions = m.handle(event)
        except InvalidTransition as exc:
            log.error("srm %s: %s", self.node, exc)
            self._metrics.srm_invalid_transitions.inc()
            self._event = event = InternalErrorOccurred(str(exc))
            actions = m.handle(event)
        if (m.state, m.reason) != before:
            log.info("srm %s: %s -> %s (%s) on %s", self.node, before[0].value, m.state.value, m.reason.value, event)
            self._metrics.srm_transitions.labels(before[0].value, m.state.value, m.reason.value).inc()
        return actions

    async def _rebuild(self) -> list[Action]:
        for name in list(self._timers):
            self._cancel_timer(name)
        try:
            setup = await self._load()
        except DatabaseUnavailable as exc:
            log.warning("srm %s: restart without fresh settings: %s", self.node, exc)
            assert self._setup is not None
            setup = self._setup
        self._install(setup)
        # The new machine knows nothing of the database's health: a failure seen before
        # the restart is told to it again by the next check, and a "restored" it never
        # saw a loss for must not start the services an admin stopped (row 22 flake).
        self._db_ok = True
        log.info("srm %s: restarted from %s", self.node, setup.stored.state if setup.stored else "nothing")
        return self._handle(SrmStarted(setup.epoch))

    def _install(self, setup: _Setup) -> None:
        stored = setup.stored
        self._setup = setup
        self._machine_gen += 1
        self.services.set_monitored("xcp-auth", setup.monitor_auth)
        self._machine = SrmMachine(
            self.node, setup.peer.name if setup.peer else None, setup.timers, ha_enabled=setup.ha_enabled,
            state=NodeState(stored.state) if stored else NodeState.INITIALIZING,
            reason=Reason(stored.reason) if stored else Reason.INITIALIZATION,
            epoch=stored.epoch if stored else 0)

    async def _load(self) -> _Setup:
        async with self._db() as session:
            group = await groups.group_of_node(session, self.node)
            peer_name = await groups.peer_of(session, self.node)
            peer = await nodes.get_node(session, peer_name) if peer_name else None
            p = await parameters.effective_parameters(session, self.node)
            stored = await srm_state.read_state(session, self.node)
            epoch = await srm_state.group_epoch(session, group.name) if group else 0
        timers = SrmTimers(p["heartbeat_interval_s"], p["heartbeat_timeout_s"], p["init_heartbeat_timeout_s"],
                           p["critical_service_delay_s"], bool(p["auto_fallback_enabled"]), p["auto_fallback_delay_s"])
        ha = bool(group.ha_enabled) if group else False
        return _Setup(group.name if group else None, ha, peer, timers, bool(p["monitor_auth_service"]), stored, epoch,
                      float(p["presence_grace_s"]))

    # --- actions -----------------------------------------------------------------------

    async def _execute(self, action: Action) -> None:
        handlers: dict[type[Action], Callable[[Any], Any]] = {
            PersistState: self._do_persist, StopCriticalServices: self._do_stop_services,
            StartCriticalServices: self._do_start_services, MoveUsers: self._do_move_users,
            StartTimer: self._do_start_timer, CancelTimer: self._do_cancel_timer, NotifyPeer: self._do_notify_peer,
            DisconnectClients: self._do_disconnect, ActivateInactiveSessions: self._do_activate,
            CheckPeerLiveness: self._do_check_peer, RefuseAdminRequest: self._do_refuse,
        }
        try:
            result = handlers[type(action)](action)
            if asyncio.iscoroutine(result):
                await result
        except DatabaseUnavailable as exc:
            log.warning("srm %s: %s failed: %s", self.node, action, exc)
            self._db_health(False)
        except Exception as exc:  # a bug in an effect must not kill the SRM: SPEC §6 row 21
            log.exception("srm %s: executing %s failed", self.node, action)
            self._post(InternalErrorOccurred(repr(exc)))

    async def _do_persist(self, a: PersistState) -> None:
        try:
            async with self._db() as session:
                await srm_state.write_state(session, self.node, a.state.value, a.reason.value,
                                            event=type(self._event).__name__, epoch=a.epoch)
        except DatabaseUnavailable as exc:
            log.warning("srm %s: state not persisted: %s", self.node, exc)
            self._db_health(False)

    async def _do_stop_services(self, _a: StopCriticalServices) -> None:
        await self.services.stop_all()

    async def _do_start_services(self, _a: StartCriticalServices) -> None:
        gen = self._machine_gen
        self._queue.put_nowait(_Item(await self.services.start_all(), machine_gen=gen))

    async def _do_move_users(self, a: MoveUsers) -> None:
        assert self._setup is not None and self._setup.group is not None
        gen = self._machine_gen
        try:
            async with self._db() as session:
                if a.assigned_node is None:
                    await srm_state.move_users(session, self._setup.group, a.src, a.dst, expected_epoch=a.epoch - 1)
                else:
                    await srm_state.restore_users(session, self._setup.group, a.dst, expected_epoch=a.epoch - 1)
        except (FencingConflict, DatabaseUnavailable, SQLAlchemyError) as exc:
            log.warning("srm %s: moving users %s -> %s failed: %s", self.node, a.src, a.dst, exc)
            self._queue.put_nowait(_Item(MoveUsersFailed(a.epoch, str(exc)), machine_gen=gen))
            return
        log.info("srm %s: users of %s now active on %s (epoch %d)", self.node, a.src, a.dst, a.epoch)
        self.on_users_moved(a.dst == self.node)  # routing must follow the move before anything acts on it
        self._handover.schedule_retire(a.src, self._setup.presence_grace_s)  # takeover or take-back
        self._queue.put_nowait(_Item(UsersMoved(a.epoch), machine_gen=gen))

    def _do_start_timer(self, a: StartTimer) -> None:
        self._cancel_timer(a.name)
        item = _Item(TimerFired(a.name), timer_gen=self._gen[a.name])
        self._timers[a.name] = asyncio.get_running_loop().call_later(a.seconds, self._queue.put_nowait, item)

    def _do_cancel_timer(self, a: CancelTimer) -> None:
        self._cancel_timer(a.name)

    def _cancel_timer(self, name: Timer) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        self._gen[name] = self._gen.get(name, 0) + 1

    async def _do_notify_peer(self, a: NotifyPeer) -> None:
        if self._client is None:
            return
        payload = peer_protocol.encode(a.msg, self._peer_session)
        if isinstance(a.msg, HeartbeatReceived):
            self._client.send_heartbeat(payload)  # unreliable: a stale heartbeat is worthless
        else:
            await self._client.send(Kind.CONTROL, payload)

    async def _do_disconnect(self, a: DisconnectClients) -> None:
        m = self._machine
        assert m is not None
        owner = m.node if a.kind is ClientKind.OWN_USERS else m.peer
        if owner is None:
            return
        async with self._db() as session:
            names = {u.username for u in await users.list_users(session, owner)}
        ended = await self._handover.let_go(names, self.redirect())
        log.info("srm %s: disconnected %d session(s) of %s's users", self.node, ended, owner)

    async def _do_activate(self, a: ActivateInactiveSessions) -> None:
        # SPEC §8: the backup connections of the users taken over carry on, activated by
        # the server (presence restored, queued messages handed over, client told).
        await self._handover.activate(a.owner, self.on_users_active)

    def _do_check_peer(self, a: CheckPeerLiveness) -> None:
        self._spawn(self._probe(a.peer))

    def _do_refuse(self, a: RefuseAdminRequest) -> None:
        log.info("srm %s: refused %s in state %s", self.node, type(a.request).__name__, a.state.value)

    # --- the peer link -------------------------------------------------------------------

    @staticmethod
    def _link_options(t: SrmTimers) -> LinkOptions:
        beat = min(1.0, t.heartbeat_interval_s / 2)
        return LinkOptions(heartbeat_interval_s=beat, dead_after_s=float(t.heartbeat_timeout_s),
                           handshake_timeout_s=min(5.0, t.heartbeat_timeout_s), connect_timeout_s=min(5.0, t.heartbeat_timeout_s),
                           backoff_initial_s=0.05, backoff_max_s=min(1.0, t.heartbeat_interval_s))

    def _on_frame(self, peer: str, kind: Kind, payload: bytes) -> None:
        try:
            envelope = peer_protocol.decode(payload)
        except peer_protocol.PeerProtocolError as exc:
            log.warning("srm %s: protocol error from %s: %s", self.node, peer, exc)
            self._metrics.srm_peer_protocol_errors.inc()
            return
        if not envelope.for_me(self.session_id):
            log.info("srm %s: dropped %s meant for an earlier process", self.node, type(envelope.msg).__name__)
            return
        self._post(envelope.msg)

    def _on_link_up(self, status: Any) -> None:
        self._peer_session = status.peer_session_id
        if self._client is not None and self._machine is not None:  # announce our state now, not in 15 s
            self._client.send_heartbeat(peer_protocol.encode(self._machine.heartbeat(), self._peer_session))

    def _on_link_down(self, status: Any) -> None:
        if isinstance(status, PeerRefused):
            self._post(PeerConnectionRefused())

    async def _drain_link(self) -> None:
        deadline = time.monotonic() + GOODBYE_TIMEOUT_S
        while self._client is not None and self._client.is_up and self._client.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # --- database liveness -------------------------------------------------------------

    async def _liveness(self) -> None:
        """Renew this node's `alive_at` every interval. A database that refuses or
        fails is a Database Failure at once; one that does not answer in time is one
        only at the second slow check in a row: a node busy with a login storm (its
        loop late, its SQLite writer queue long) has a slow database, not a lost one.
        A slow check is not counted at all when this node's own event loop ran late by
        a fifth of the time limit or more meanwhile (the time went to the node), or when
        another write completed within the time limit (`db.engine.WRITES`: the database
        is busy, its writer queue long). Seen in a 10,000-user re-login storm on SQLite:
        two slow checks in a row made the backup declare Database Failure and redirect
        everyone to the dead node. A database that refuses or fails, or completes no
        write at all, is still caught."""
        slow = 0
        while True:
            assert self._setup is not None
            t = self._setup.timers
            limit = max(5.0, t.heartbeat_timeout_s)
            lag = LoopLag()
            try:
                async with lag.watching(), asyncio.timeout(limit):
                    await self._renew_and_sample()
                slow = 0
                self._db_health(True)
            except TimeoutError:
                wrote_s = time.monotonic() - WRITES.at
                if lag.worst_s >= limit * SATURATED_LAG_SHARE:
                    log.warning("srm %s: database check took over %.0fs while this node's event loop ran up to "
                                "%.1fs late: the node is saturated, not the database (not counted)",
                                self.node, limit, lag.worst_s)
                elif wrote_s < limit:
                    log.warning("srm %s: database check took over %.0fs, but a write completed %.1fs ago: the "
                                "database is busy, not lost (not counted)", self.node, limit, wrote_s)
                else:
                    slow += 1
                    log.warning("srm %s: database check took over %.0fs (%d in a row)", self.node, limit, slow)
                    if slow >= DB_SLOW_CHECKS:
                        self._db_health(False)
            except DatabaseUnavailable as exc:
                log.warning("srm %s: database unreachable: %s", self.node, exc)
                self._db_health(False)
            await asyncio.sleep(t.heartbeat_interval_s)

    async def _renew_and_sample(self) -> srm_state.HaState | None:
        peer = self._setup.peer if self._setup is not None else None
        async with self._db() as session:
            await srm_state.renew_alive(session, self.node)
            row = await srm_state.read_state(session, peer.name) if peer else None
        value = row.alive_at if row else None
        if not self._peer_seen:
            self._peer_seen = True
            self._peer_alive = (value, self._peer_alive[1])  # a baseline, not a sign of life
        elif value != self._peer_alive[0]:
            self._peer_alive = (value, time.monotonic())
        return row

    def _db_health(self, ok: bool) -> None:
        if ok != self._db_ok:
            self._db_ok = ok
            self._post(DbRestored() if ok else DbUnavailable())

    async def _probe(self, peer: str) -> None:
        """CheckPeerLiveness: alive if the peer renewed `alive_at` within two intervals."""
        assert self._setup is not None
        interval = self._setup.timers.heartbeat_interval_s
        stale_after = 2 * interval + 0.5  # a live peer renews every interval
        started = time.monotonic()
        while True:
            try:
                row = await self._renew_and_sample()
            except DatabaseUnavailable:
                row = None  # no verdict without the database: try again
            changed_at = self._peer_alive[1]
            if row is not None and changed_at > started:
                self._post(PeerAliveInDatabase(NodeState(row.state), Reason(row.reason), row.epoch, self._setup.ha_enabled))
                return
            if self._db_ok and time.monotonic() - changed_at >= stale_after:
                self._post(PeerDeadInDatabase())
                return
            await asyncio.sleep(min(0.25, interval / 4))

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
