"""The SRM's asyncio adapter: feeds the machine, runs its timers, executes its actions.

Rules of this module:
- No decisions: which state follows which event is `SrmMachine`'s job, whether the
  database or the peer is alive is `liveness`'s, whether a login may proceed is
  `admission`'s. The runner only turns the world into events and samples (peer
  messages via `PeerChannel`, timers, database checks, service health via the inbox,
  admin requests) and actions into effects.
- One worker task handles one inbox item at a time and executes the returned actions
  strictly in order (database writes before messages, STYLE §3). Effects report back
  through the inbox (`UsersMoved`, `CriticalServicesRestored`, `PeerDeadInDatabase`...).
- Every collaborator comes in through the constructor, typed by what the runner uses.
  The cluster is told that users moved (right after the committed move, before the
  machine hears of it: routing must follow the move before anything acts on it) and
  that the arrived users are active, only from the executors of `MoveUsers` and
  `ActivateInactiveSessions`.
- Timers carry a generation: a timer cancelled or restarted after it fired is dropped.
  Results of an action are only for the machine that asked (a restart drops them).
- A user move that finds no database is tried again for up to `db_outage_grace_s`
  (a host that dies with the database primary leaves the survivor without one until
  the standby is promoted); a Database Failure verdict queued before a move committed
  is dropped as stale (the database answered, and the epoch fenced the move).
- Database liveness (SPEC §9): `LivenessWatch` renews this node's `alive_at` every
  heartbeat interval and samples the peer's; `liveness` judges the samples. Every
  heartbeat sent carries the watch's report of this node's database checks, and
  every heartbeat received gives the peer's to the watch (issue #17: a promotion
  that both nodes see is no Database Failure).
- A lost compare-and-set reports the epoch it found and whether the peer's SRM link
  was up (`MoveUsersFailed`): the table decides whether a takeover retries once.
- A state the database refused to store (`PersistState` failed) is written again
  once the database answers (`db_back`), with the machine's state at that moment.
- `InvalidTransition` is logged, counted and fed back as `InternalErrorOccurred`.
- Each transition is one log line: node, from, to, reason, event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import srm_state, users
from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.db.errors import FencingConflict
from presence_ha.server.link.secure import LinkTls
from presence_ha.server.srm import admission
from presence_ha.server.srm.actions import (
    Action,
    ActivateInactiveSessions,
    CancelTimer,
    CheckPeerLiveness,
    ClientKind,
    DemoteClients,
    DisconnectClients,
    MoveUsers,
    NotifyPeer,
    PersistState,
    RefuseAdminRequest,
    StartCriticalServices,
    StartTimer,
    StopCriticalServices,
)
from presence_ha.server.srm.collaborators import ClusterNotifier, SrmMetrics, SrmServices
from presence_ha.server.srm.events import (
    AdminRequestedFailover,
    AdminRequestedFallback,
    DbUnavailable,
    Event,
    HeartbeatReceived,
    InternalErrorOccurred,
    MoveUsersFailed,
    NodeShuttingDown,
    SrmStarted,
    Timer,
    TimerFired,
    UsersMoved,
)
from presence_ha.server.srm.handover import Handover, HandoverPort
from presence_ha.server.srm.inbox import Item, SrmInbox
from presence_ha.server.srm.machine import SrmMachine
from presence_ha.server.srm.peer_link import PeerChannel
from presence_ha.server.srm.redirect import RedirectTarget, redirect_error
from presence_ha.server.srm.setup import Setup, load_setup
from presence_ha.server.srm.state_signal import StateSignal
from presence_ha.server.srm.table import InvalidTransition, NodeState, Reason
from presence_ha.server.srm.watch import LivenessWatch
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition

log = logging.getLogger(__name__)

MOVE_RETRY_S = 0.5  # a move that found no database tries again this often (within db_outage_grace_s)
CLOSE_TIMEOUT_S = 5.0  # how long closing client streams may take
GOODBYE_TIMEOUT_S = 2.0  # how long a shutting-down node waits for the peer's ack


@dataclass(frozen=True)
class SrmPort:
    """Where this node's SRM listens for its peer, the cluster secret of the link, its TLS."""

    host: str
    port: int
    secret: bytes
    tls: LinkTls | None = None


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
    timers_left: dict[str, float] = dataclasses.field(default_factory=dict)  # pending timer: seconds left


# An admin request the SRM table refuses, in the admin's words (SPEC §7): what, and when it is possible.
ADMIN_WORDS: dict[type[Event], tuple[str, str]] = {
    AdminRequestedFailover: ("failover", "only a Normal node hands its users to its peer"),
    AdminRequestedFallback: ("fallback", "only an Idle or Failed Over node takes its users back"),
}


def refusal_text(event: Event, node: str, state: NodeState) -> str:
    """ "fallback is not possible while n1 is Normal: only an Idle or Failed Over ..." """
    what, when = ADMIN_WORDS.get(type(event), (type(event).__name__, "the SRM table has no such transition"))
    return f"{what} is not possible while {node} is {state.value}: {when} (`ha status` shows the states)"


class SrmRunner:
    """One node's SRM: `start`, `status`, `admin_request`, `restart`, `login_refusal`, `stop`."""

    def __init__(self, node: str, session_factory: async_sessionmaker[AsyncSession], inbox: SrmInbox,
                 services: SrmServices, clients: HandoverPort, cluster: ClusterNotifier, metrics: SrmMetrics,
                 port: SrmPort) -> None:
        self.node, self._db, self._inbox, self._services = node, session_factory, inbox, services
        self._cluster, self._metrics, self._port = cluster, metrics, port
        self.session_id = os.urandom(16)  # this process, as the peer's messages address it
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._gen: dict[Timer, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._machine: SrmMachine | None = None
        self._machine_gen = 0  # bumped by every (re)install: stale action results are dropped
        self._setup: Setup | None = None
        self._event: Event | None = None
        self._changed = StateSignal()
        self._watch = LivenessWatch(node, session_factory, inbox, self._tell_peer_now, self._db_back)
        self._peer = PeerChannel(node, port.secret, self.session_id, inbox, metrics.srm_peer_protocol_errors,
                                 lambda: self._stamp(self._machine.heartbeat()) if self._machine is not None else None,
                                 port.tls)
        self._persist_lock = asyncio.Lock()
        self._unpersisted: str | None = None  # the event whose state the database refused to store
        self._moved_at = float("-inf")  # when a user move last committed
        self._rebuilt_at = float("-inf")  # when the SRM last (re)started (`_stale_report`)
        self._handover = Handover(node, clients, self._spawn)

    def set_secret(self, secret: bytes) -> None:
        """The peer link authenticates new connections with `secret` (a rotated cluster secret)."""
        self._peer.set_secret(secret)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Read the persisted state, open the SRM port, dial the peer, feed SrmStarted."""
        async with self._db() as session:
            setup = await load_setup(session, self.node)
        async with self._db() as session:  # create this node's row before two tasks may write it
            await srm_state.renew_alive(session, self.node)
        self._install(setup)
        self._inbox.post(SrmStarted(setup.epoch))
        await self._peer.open(self._port.host, self._port.port, setup.peer, setup.timers)
        self._spawn(self._work())
        self._spawn(self._watch.run())
        log.info("srm %s started: group %s, peer %s, HA %s, stored %s", self.node, setup.group,
                 setup.peer.name if setup.peer else None, "on" if setup.ha_enabled else "off",
                 setup.stored.state if setup.stored else "nothing")

    async def stop(self) -> None:
        """Clean shutdown: stop the services, tell the peer (PeerRebooted), close."""
        self._inbox.close()  # from now on the peer's news and the services' health change nothing here
        if self._machine is not None and self._tasks:
            try:
                await asyncio.wait_for(self._submit(NodeShuttingDown()), CLOSE_TIMEOUT_S + GOODBYE_TIMEOUT_S)
            except TimeoutError:
                log.warning("srm %s: shutdown actions did not finish in time", self.node)
            await self._peer.drain(GOODBYE_TIMEOUT_S)
        for handle in self._timers.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._peer.close()

    async def restart(self) -> None:
        """Recovery (SPEC §7): rebuild the machine from the persisted state and restart it."""
        await self._submit(None)

    # --- API for the admin layer, the client port and the services ----------------------

    @property
    def moved_at(self) -> float:
        """`time.monotonic()` when this SRM last committed a user move (-inf: never)."""
        return self._moved_at

    def status(self) -> SrmStatus:
        m, s = self._machine, self._setup
        if m is None or s is None:
            raise RuntimeError("the SRM is not started")
        return SrmStatus(self.node, s.group, m.ha_enabled, m.state, m.reason, m.peer, m.peer_state, m.epoch,
                         self._timers_left())

    def _timers_left(self) -> dict[str, float]:
        """Seconds left on each pending timer but the heartbeat's own (the admin page's
        countdowns: a critical service down fails the node over when its delay ends)."""
        now = asyncio.get_running_loop().time()
        return {name.value: round(handle.when() - now, 1) for name, handle in self._timers.items()
                if name is not Timer.HEARTBEAT and not handle.cancelled() and handle.when() > now}

    async def admin_request(self, event: Event) -> tuple[bool, str]:
        """Feed an admin request; (accepted, why) once its actions have run."""
        actions = await self._submit(event)
        refused = [a for a in actions if isinstance(a, RefuseAdminRequest)]
        m = self._machine
        assert m is not None
        if refused:
            return False, refusal_text(event, self.node, refused[0].state)
        return True, f"{self.node}: {m.state.value} / {m.reason.value}"

    def redirect_target(self) -> RedirectTarget | None:
        """Where the clients this node lets go are sent: the peer while HA is on and its
        process is alive (the SRM link is up). Never a dead peer: clients let go while
        the peer is down are told `system-shutdown` and come back through the service
        address or their own list of servers."""
        if self._setup is None or not self._peer.up:
            return None
        return self._setup.redirect_target

    async def login_refusal(self, username: str,
                            assigned: str | admission.Unread | None = admission.UNREAD) -> SaslFailure | None:
        """None if the SRM state lets `username` log in here (`admission.decide`).
        `assigned`: the user's assigned node if the caller read it during this login."""
        waited: frozenset[admission.Settle] = frozenset()
        while True:
            decision = admission.decide(self._view(), assigned, waited)
            if isinstance(decision, admission.Admit):
                return None
            if isinstance(decision, admission.Refuse):
                return SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, self._refusal_text(decision.reason, username))
            if isinstance(decision, admission.ReadAssignment):
                async with self._db() as session:
                    location = await users.user_location(session, username)
                assigned = location[0] if location else None
            else:
                until = decision.until
                await self._changed.wait_until(functools.partial(self._settled, until), admission.SETTLE_S)
                waited |= {until}

    def _settled(self, until: admission.Settle) -> bool:
        return admission.settled(until, self._view())

    def _view(self) -> admission.SrmView | None:
        m = self._machine
        return admission.SrmView(m.state, m.serving) if m is not None else None

    def _refusal_text(self, reason: admission.Refusal, username: str) -> str:
        if reason is admission.Refusal.USER_MOVING:
            return f"{username} is moving between nodes; retry later"
        state = self._machine.state.value if self._machine is not None else "starting"
        return f"node {self.node} serves no users now ({state})"

    # --- the worker --------------------------------------------------------------------

    async def _submit(self, event: Event | None) -> list[Action]:
        reply: asyncio.Future[list[Action]] = asyncio.get_running_loop().create_future()
        self._inbox.put(Item(event, reply))
        return await reply

    async def _work(self) -> None:
        while True:
            item = await self._inbox.get()
            if item.event is None:
                actions = await self._rebuild()
            elif isinstance(item.event, TimerFired) and item.timer_gen != self._gen.get(item.event.name):
                continue  # cancelled or restarted after it fired
            elif item.machine_gen is not None and item.machine_gen != self._machine_gen:
                log.info("srm %s: dropped %s meant for the machine before a restart", self.node, item.event)
                continue
            elif isinstance(item.event, DbUnavailable) and self._moved_at > item.at:
                # A move committed after this verdict: the database answers, and the epoch is
                # ours (a peer's move would have fenced it). Stopping now would serve no one.
                log.warning("srm %s: Database Failure dropped: a move committed since", self.node)
                continue
            elif isinstance(item.event, HeartbeatReceived) and self._stale_report(item.event):
                log.info("srm %s: held a report of the peer's SRM from before its own restart (Unknown, HA %s): "
                         "a recovery restarts it too", self.node, "on" if item.event.peer_ha_enabled else "off")
                continue
            else:
                actions = self._handle(item.event)
            for action in actions:
                await self._execute(action)
            if item.reply is not None and not item.reply.done():
                item.reply.set_result(actions)  # after the actions: the admin sees their effect

    def _stale_report(self, event: HeartbeatReceived) -> bool:
        """A recovery (`ha recover`) restarts both SRMs, one after the other: the SRM
        restarted first may still hear the peer's SRM of before, Unknown with the old HA
        switch (row 24), and would take it for a mismatch that the peer's own restart is
        about to clear. Such a report is held for two heartbeat intervals after a restart;
        a mismatch that outlasts them is row 24 again."""
        m, setup = self._machine, self._setup
        if m is None or setup is None or m.state is not NodeState.INITIALIZING:
            return False
        if event.peer_state is not NodeState.UNKNOWN or event.peer_ha_enabled == m.ha_enabled:
            return False
        return time.monotonic() - self._rebuilt_at < 2 * setup.timers.heartbeat_interval_s

    def _handle(self, event: Event) -> list[Action]:
        m = self._machine
        assert m is not None
        if isinstance(event, HeartbeatReceived):
            self._watch.peer_reported(event)
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
            self._changed.notify()
        return actions

    async def _rebuild(self) -> list[Action]:
        for name in list(self._timers):
            self._cancel_timer(name)
        try:
            async with self._db() as session:
                setup = await load_setup(session, self.node)
        except DatabaseUnavailable as exc:
            log.warning("srm %s: restart without fresh settings: %s", self.node, exc)
            assert self._setup is not None
            setup = self._setup
        self._install(setup)
        self._rebuilt_at = time.monotonic()
        self._watch.machine_rebuilt()  # see liveness: the new machine assumes a healthy database
        log.info("srm %s: restarted from %s", self.node, setup.stored.state if setup.stored else "nothing")
        return self._handle(SrmStarted(setup.epoch))

    def _install(self, setup: Setup) -> None:
        self._setup = setup
        self._watch.use(setup)
        self._machine_gen += 1
        self._services.set_monitored("xcp-auth", setup.monitor_auth)
        self._machine = SrmMachine(
            self.node, setup.peer.name if setup.peer else None, setup.timers, ha_enabled=setup.ha_enabled,
            state=setup.state, reason=setup.reason, epoch=setup.stored.epoch if setup.stored else 0)
        self._changed.notify()

    # --- actions -----------------------------------------------------------------------

    async def _execute(self, action: Action) -> None:
        handlers: dict[type[Action], Callable[[Any], Awaitable[None] | None]] = {
            PersistState: self._do_persist, StopCriticalServices: self._do_stop_services,
            StartCriticalServices: self._do_start_services, MoveUsers: self._do_move_users,
            StartTimer: self._do_start_timer, CancelTimer: self._do_cancel_timer, NotifyPeer: self._do_notify_peer,
            DisconnectClients: self._do_disconnect, ActivateInactiveSessions: self._do_activate,
            DemoteClients: self._do_demote,
            CheckPeerLiveness: self._do_check_peer, RefuseAdminRequest: self._do_refuse,
        }
        try:
            result = handlers[type(action)](action)
            if result is not None:
                await result
        except DatabaseUnavailable as exc:
            log.warning("srm %s: %s failed: %s", self.node, action, exc)
            self._watch.failed()
        except Exception as exc:  # a bug in an effect must not kill the SRM: SPEC §6 row 21
            log.exception("srm %s: executing %s failed", self.node, action)
            self._inbox.post(InternalErrorOccurred(repr(exc)))

    async def _do_persist(self, a: PersistState) -> None:
        event = type(self._event).__name__
        try:
            async with self._persist_lock, self._db() as session:
                await srm_state.write_state(session, self.node, a.state.value, a.reason.value, event=event,
                                            epoch=a.epoch)
            self._unpersisted = None
        except DatabaseUnavailable as exc:
            log.warning("srm %s: state not persisted (written once the database answers): %s", self.node, exc)
            self._unpersisted = event
            self._watch.failed()

    def _db_back(self) -> None:
        if self._unpersisted is not None:
            self._spawn(self._persist_again())

    async def _persist_again(self) -> None:
        """The machine's state now, which the database refused earlier (under the lock:
        a newer `PersistState` waits, so the newest state is written last)."""
        async with self._persist_lock:
            m, event = self._machine, self._unpersisted
            if m is None or event is None:
                return
            try:
                async with self._db() as session:
                    await srm_state.write_state(session, self.node, m.state.value, m.reason.value, event=event,
                                                epoch=m.epoch)
            except DatabaseUnavailable as exc:
                log.warning("srm %s: state still not persisted: %s", self.node, exc)
                return
            self._unpersisted = None
            log.info("srm %s: persisted %s / %s now that the database answers", self.node, m.state.value,
                     m.reason.value)

    def _stamp(self, heartbeat: HeartbeatReceived) -> HeartbeatReceived:
        """This node's heartbeat with its report of its database checks."""
        report = self._watch.report()
        return dataclasses.replace(heartbeat, peer_db_ok=report.ok, peer_db_age_s=report.age_s)

    def _tell_peer_now(self) -> None:
        """The watch has news for the peer (our checks changed, or the peer's fail): a heartbeat now."""
        m = self._machine
        if m is not None and m.peer is not None:
            self._spawn(self._peer.send(self._stamp(m.heartbeat())))

    async def _do_stop_services(self, _a: StopCriticalServices) -> None:
        await self._services.stop_all()

    async def _do_start_services(self, _a: StartCriticalServices) -> None:
        gen = self._machine_gen
        self._inbox.put(Item(await self._services.start_all(), machine_gen=gen))

    async def _do_move_users(self, a: MoveUsers) -> None:
        assert self._setup is not None and self._setup.group is not None
        gen = self._machine_gen
        try:
            await self._move_within_outage_grace(a)
        except (FencingConflict, DatabaseUnavailable, SQLAlchemyError) as exc:
            log.warning("srm %s: moving users %s -> %s failed: %s", self.node, a.src, a.dst, exc)
            stored = exc.actual if isinstance(exc, FencingConflict) else None
            self._inbox.put(Item(MoveUsersFailed(a.epoch, str(exc), stored, self._peer.up), machine_gen=gen))
            return
        self._moved_at = time.monotonic()
        log.info("srm %s: users of %s now active on %s (epoch %d)", self.node, a.src, a.dst, a.epoch)
        self._cluster.users_moved(a.dst == self.node)  # routing must follow the move before anything acts on it
        self._handover.schedule_retire(a.src, self._setup.presence_grace_s)  # takeover or take-back
        self._inbox.put(Item(UsersMoved(a.epoch), machine_gen=gen))

    async def _move_within_outage_grace(self, a: MoveUsers) -> None:
        """The move's transaction; an unreachable database is tried again for up to
        `db_outage_grace_s` (issue #17: a host that dies with the database primary on it
        leaves the survivor without a database until the standby is promoted; failing at
        once would put the pair in Failed Mode, row 19, for a fault it can ride out). Only
        while the peer link is down: with the peer alive (an admin's failover or fallback)
        a failed move is SPEC rows 19-20 at once, as before, and the peer keeps its
        heartbeat timer."""
        assert self._setup is not None and self._setup.group is not None
        deadline = time.monotonic() + self._setup.db_outage_grace_s
        while True:
            try:
                async with self._db() as session:
                    if a.assigned_node is None:
                        await srm_state.move_users(session, self._setup.group, a.src, a.dst,
                                                   expected_epoch=a.epoch - 1)
                    else:
                        await srm_state.restore_users(session, self._setup.group, a.dst, expected_epoch=a.epoch - 1)
                return
            except DatabaseUnavailable as exc:
                if self._peer.up or time.monotonic() + MOVE_RETRY_S > deadline:
                    raise
                log.warning("srm %s: moving users %s -> %s waits for the database: %s", self.node, a.src, a.dst, exc)
                await asyncio.sleep(MOVE_RETRY_S)

    def _do_start_timer(self, a: StartTimer) -> None:
        self._cancel_timer(a.name)
        item = Item(TimerFired(a.name), timer_gen=self._gen[a.name])
        self._timers[a.name] = asyncio.get_running_loop().call_later(a.seconds, self._inbox.put, item)

    def _do_cancel_timer(self, a: CancelTimer) -> None:
        self._cancel_timer(a.name)

    def _cancel_timer(self, name: Timer) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        self._gen[name] = self._gen.get(name, 0) + 1

    async def _do_notify_peer(self, a: NotifyPeer) -> None:
        await self._peer.send(self._stamp(a.msg) if isinstance(a.msg, HeartbeatReceived) else a.msg)

    async def _usernames(self, kind: ClientKind) -> tuple[str | None, set[str]]:
        """(the owner node of `kind`, the usernames assigned to it)."""
        m = self._machine
        assert m is not None
        owner = m.node if kind is ClientKind.OWN_USERS else m.peer
        if owner is None:
            return None, set()
        async with self._db() as session:
            return owner, {u.username for u in await users.list_users(session, owner)}

    async def _do_disconnect(self, a: DisconnectClients) -> None:
        owner, names = await self._usernames(a.kind)
        if owner is None:
            return
        demoted = self._handover.demoted_users(names)
        ended = await self._handover.let_go(names, redirect_error(self.node, self.redirect_target()))
        log.info("srm %s: disconnected %d session(s) of %s's users", self.node, ended, owner)
        if demoted:
            # The peer serves the users it took from us (make before break): route to it
            # from now on, and hand it what was queued here for them while they were demoted.
            self._cluster.users_moved(False)
            forwarded = await self._handover.forward_queued(demoted)
            log.info("srm %s: %d message(s) queued here for %d demoted user(s) routed to their node", self.node,
                     forwarded, len(demoted))

    async def _do_demote(self, a: DemoteClients) -> None:
        owner, names = await self._usernames(a.kind)
        if owner is not None:
            demoted = self._handover.demote(names)
            log.info("srm %s: demoted %d session(s) of %s's users until the peer serves them", self.node, demoted,
                     owner)

    async def _do_activate(self, a: ActivateInactiveSessions) -> None:
        # SPEC §8: the backup connections of the users taken over carry on, activated by
        # the server (presence restored, queued messages handed over, client told).
        await self._handover.activate(a.owner, self._cluster.users_active)

    def _do_check_peer(self, a: CheckPeerLiveness) -> None:
        self._spawn(self._watch.probe(a.peer))

    def _do_refuse(self, a: RefuseAdminRequest) -> None:
        log.info("srm %s: refused %s in state %s", self.node, type(a.request).__name__, a.state.value)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
