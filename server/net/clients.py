"""The node's client port: the listener, its connections, and sessions awaiting resumption.

Rules of this module:
- One `ClientPort` per node. It owns the map session -> connection and registers
  sessions in the `SessionRegistry` (the only writer besides nobody).
- Binding a full JID that is already bound replaces the old session: the old stream
  ends with `conflict` (RFC 6120 §7.7.2.1, "the new session replaces the old").
- XEP-0198: a session whose connection was lost with resumption enabled stays bound
  ("detached") for `limits.sm_resume_timeout_s`; stanzas for it are queued as unacked
  and re-sent on `<resume/>`. When it finally ends, `SessionClosed(graceful=False)`
  is notified and its unacknowledged messages are routed again (to another resource
  or offline storage), so an unacknowledged message is not lost.
- Graceful shutdown (`shutdown`): stop accepting, notify `SessionClosed(graceful=True)`
  for every session while all connections still work (contacts get unavailable
  presence), then end every stream with `system-shutdown`, then wait (bounded).
- Collaborators come in the constructor (`server.net.collaborators`,
  `server.admission`): the presence engine's and the authentication service's
  switches, the SRM's `LoginAdmission`, and from the cluster (None without it):
  `relay` opens sessions of connections whose user another node serves; `hosted`
  holds the sessions this node serves for clients connected elsewhere; `replicas`
  copies XEP-0198 sessions to the backup and restores the dead peer's ones
  (`resume_replica`). Binding, replacing and closing treat hosted sessions like
  local ones (`bind_relayed`, `close_sessions`, `shutdown`).
- Logins: every connection negotiates under the port's `LoginGate` (`server.net.limits`)
  until it binds, resumes or ends (`login_done`); once a burst of logins is over, the
  heap it freed is given back to the OS (`_trim_heap`).
- Admission of a new connection (`admit`): first the per-address caps (`AddressBook`:
  connections, unauthenticated connections), refused at once; then the fair login
  gate, which may make an address holding more than its share give back a place: its
  oldest negotiating connection ends with `resource-constraint` (`_negotiating` keeps
  them per address, oldest first).
- Two listeners, one port core: the client port (STARTTLS) and, unless configured off,
  the XEP-0368 direct TLS port (`tls.direct_port`), where TLS starts with the first
  byte (`ClientTransport.begin_tls`) and the stream begins with TLS on and STARTTLS
  not offered. Both stop and start together (the router service).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server.admission import LoginAdmission, ServiceSwitch
from presence_ha.server.auth import Accounts
from presence_ha.server.config import LimitsConfig, NodeConfig
from presence_ha.server.context import FeatureContext
from presence_ha.server.loop_lag import lateness
from presence_ha.server.metrics import Metrics
from presence_ha.server.net.c2s import Connection
from presence_ha.server.net.collaborators import Hosted, Relay, Replicas
from presence_ha.server.net.limits import AddressBook, AuthThrottle, LoginGate
from presence_ha.server.net.transport import ClientTransport
from presence_ha.server.quotas import Bind, Quota, QuotaExceeded, bind_verdict
from presence_ha.server.router import SessionClosed
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp import caps
from presence_ha.server.xmpp.errors import StanzaError, StreamCondition, StreamError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.sm import StreamManagement
from presence_ha.server.xmpp.stream import StreamSettings

log = logging.getLogger(__name__)
REGISTRATION_CHECK_S = 1.0  # on top of `server.auth`'s parameter cache
TRIM_AFTER_LOGINS = 100  # a burst this big is followed by a heap trim...
TRIM_DELAY_S = 1.0  # ...once no login has been negotiating for this long
LAG_PERIOD_S = 0.1  # the event-loop lag is sampled this often (login gate, gauge)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None (another libc)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


@dataclass(eq=False)
class Resumable:
    session: Session
    sm: StreamManagement
    connection: Connection | None  # None while detached
    expiry: asyncio.TimerHandle | None = None


class ClientPort:
    def __init__(
        self, ctx: FeatureContext, accounts: Accounts, config: NodeConfig, ssl_context: ssl.SSLContext,
        metrics: Metrics, secret: bytes, *, presence: ServiceSwitch, auth: ServiceSwitch,
        admission: LoginAdmission | None = None, relay: Relay | None = None, hosted: Hosted | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.ctx = ctx
        self.accounts = accounts
        self.config = config
        self.limits: LimitsConfig = config.limits
        self.ssl_context = ssl_context
        self.metrics = metrics
        self.secret = secret
        self.rng = random.SystemRandom()
        self.throttle = AuthThrottle(self.limits.auth_throttle_base_s, self.limits.auth_throttle_max_s,
                                     self.limits.auth_throttle_window_s)
        self.login_gate = LoginGate(self.limits.logins_in_progress_min, self.limits.login_budget_s)
        self.addresses = AddressBook(self.limits.max_connections_per_address,
                                     self.limits.max_unauthenticated_per_address)
        self._negotiating: dict[str, dict[Connection, None]] = {}  # under the gate, per address, oldest first
        self._lag_watch: asyncio.Task[None] | None = None
        self._logins_since_trim = 0
        self._trim: asyncio.TimerHandle | None = None
        self.connections: set[Connection] = set()
        self._owner: dict[Session, Connection] = {}
        self._resumable: dict[str, Resumable] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.Server] = []  # the client port, then the direct TLS port
        self._stream_settings: dict[bool, StreamSettings] = {}
        self._registration, self._registration_until = False, float("-inf")
        self._registration_lock = asyncio.Lock()
        # PLAIN's PBKDF2 runs here, not on the event loop (c2s `DerivationRequested`):
        # hashlib releases the GIL, so one thread per core lets the other cores help.
        self.derivations = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="sasl-derive")
        # The node's critical services and SRM (server.services): presence engine up,
        # authentication service up, and the SRM's login admission (None: admitted).
        self.presence, self.auth, self.admission = presence, auth, admission
        self.relay = relay  # server.cluster.relay.RelayDialer
        self.hosted = hosted  # server.cluster.relay.HostedSessions
        self.replicas = replicas  # server.cluster.sm_mirror.SmReplication (XEP-0198 on the backup)

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def detached_count(self) -> int:
        return sum(1 for r in self._resumable.values() if r.connection is None)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- listening ----------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        await self._settings()  # the first connection finds its settings ready
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(
            lambda: ClientTransport(self._connected), host, port, reuse_address=True, backlog=1024)]
        direct = self.config.tls.direct_port or None
        if direct is not None:
            try:
                servers.append(await loop.create_server(
                    lambda: ClientTransport(self._connected_direct), host, direct, reuse_address=True, backlog=1024))
            except OSError:
                servers[0].close()
                raise
        self._servers = servers
        if self._lag_watch is None:
            self._lag_watch = loop.create_task(self._watch_lag())
        log.info("client port listening on %s:%d%s", host, port,
                 f", direct TLS (XEP-0368) on {direct}" if direct is not None else "")

    async def _watch_lag(self) -> None:
        """How late the event loop runs, every `LAG_PERIOD_S`: for the login gate (a loop
        running late is a saturated node) and the `event_loop_lag_seconds` gauge."""
        async for lag in lateness(LAG_PERIOD_S):
            self.login_gate.note_lag(self.now(), lag)
            self.metrics.loop_lag.set(lag)

    def _stop_lag_watch(self) -> None:
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            self._lag_watch = None

    async def _registration_enabled(self) -> bool:
        """The cluster parameter, read once per `REGISTRATION_CHECK_S` whatever the rate
        of accepts: when the cached value expires under a burst, one query refreshes it
        (not one per connection), and a failed read is not retried by every accept."""
        if self.now() < self._registration_until:
            return self._registration
        async with self._registration_lock:
            if self.now() >= self._registration_until:
                try:
                    self._registration = await self.accounts.registration_enabled()
                except DatabaseUnavailable:
                    self._registration = False
                self._registration_until = self.now() + REGISTRATION_CHECK_S
        return self._registration

    async def _settings(self) -> StreamSettings:
        return self._settings_for(await self._registration_enabled())

    def _settings_for(self, registration: bool) -> StreamSettings:
        settings = self._stream_settings.get(registration)
        if settings is None:  # one frozen object per flag value, shared by all connections
            settings = self._stream_settings[registration] = StreamSettings(
                domain=self.ctx.domain,
                tls_required=self.config.tls.required,
                max_stanza_bytes=self.limits.max_stanza_bytes,
                registration_enabled=registration,
                max_auth_failures=self.limits.max_auth_failures,
                sm_max_resume_s=self.limits.sm_resume_timeout_s,
                max_header_bytes=self.limits.max_header_bytes,
                max_header_namespaces=self.limits.max_header_namespaces,
                max_tag_bytes_unauthenticated=self.limits.max_tag_bytes_unauthenticated,
                max_tag_bytes=self.limits.max_tag_bytes,
                caps_ver=caps.ver([caps.SERVER_IDENTITY], self.ctx.router.disco_features),
            )
        return settings

    def _connected(self, transport: ClientTransport) -> Connection:
        """A client connected (`ClientTransport.connection_made`): its connection."""
        self.metrics.connections.inc()
        if self.now() >= self._registration_until and not self._registration_lock.locked():
            self._spawn(self._settings())  # the registration flag, refreshed beside the accepts
        connection = Connection(self, transport, self._settings_for(self._registration))
        self.connections.add(connection)
        return connection

    def _connected_direct(self, transport: ClientTransport) -> Connection:
        """A client connected to the direct TLS port: TLS first, then its connection."""
        transport.begin_tls(self.ssl_context)
        return self._connected(transport)

    # -- admission: per-address caps and the login gate (server.net.limits) ---------------
    def admit(self, connection: Connection) -> tuple[StreamError | None, bool]:
        """Count a new connection in: `(refusal, at_once)`. A refusal `at_once` ends the
        stream now (an address over its caps); otherwise it answers the stream header
        (the gate is full). Admitted connections are under the gate (`gated`)."""
        address = connection.ip
        why = self.addresses.address_refusal(address)
        if why is not None:
            total, _unauthenticated = self.addresses.count(address)
            condition = (StreamCondition.POLICY_VIOLATION if total >= self.limits.max_connections_per_address
                         else StreamCondition.RESOURCE_CONSTRAINT)
            return StreamError(condition, why + "; retry later"), True
        connection.counted = True
        admission = self.login_gate.enter(connection.gated_at, address)
        if not admission.admitted:
            return StreamError(StreamCondition.RESOURCE_CONSTRAINT, "too many logins in progress; retry later"), False
        connection.gated = True
        self._negotiating.setdefault(address, {})[connection] = None
        if admission.evict is not None:
            self._evict(admission.evict)
        return None, False

    def _evict(self, address: str) -> None:
        """`address` holds more of the full gate than its share: its oldest negotiating
        connection gives its place back and ends."""
        waiting = self._negotiating.get(address)
        if not waiting:
            return
        victim = next(iter(waiting))
        victim.leave_gate()
        log.info("login gate full: a negotiating connection from %s makes room for another address", address)
        victim.kick_soon(StreamError(StreamCondition.RESOURCE_CONSTRAINT,
                                     f"too many logins in progress from {address}; retry later"))

    def connection_authenticated(self, connection: Connection) -> None:
        """The connection bound or resumed a session: no longer unauthenticated."""
        if connection.counted and not connection.authenticated:
            connection.authenticated = True
            self.addresses.authenticated(connection.ip)

    def connection_uncounted(self, connection: Connection) -> None:
        """The connection ended: out of the per-address counts."""
        if connection.counted:
            connection.counted = False
            self.addresses.closed(connection.ip, connection.authenticated)

    def login_done(self, completed: bool, started: float | None = None, connection: Connection | None = None) -> None:
        """A connection left the login gate (`completed`: it bound or resumed a session;
        `started`: when it entered)."""
        address = "" if connection is None else connection.ip
        if connection is not None:
            waiting = self._negotiating.get(address)
            if waiting is not None:
                waiting.pop(connection, None)
                if not waiting:
                    del self._negotiating[address]
        self.login_gate.leave(self.now(), completed, started, address)
        self._logins_since_trim += completed
        if self.login_gate.in_progress == 0 and self._logins_since_trim >= TRIM_AFTER_LOGINS and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim_heap)

    def _trim_heap(self) -> None:
        """After a login burst, give the heap it freed back to the OS. Hundreds of
        concurrent TLS handshakes and database sessions leave free but resident heap
        behind, which glibc keeps unless asked (1,000 idle TLS sessions logged in at
        500/s: 73 kB of RSS per session, 62 with this trim; 47 when logged in at 200/s)."""
        self._trim = None
        if self.login_gate.in_progress:
            return  # a new burst began: trim after that one
        self._logins_since_trim = 0
        if MALLOC_TRIM is not None:
            started = self.now()
            MALLOC_TRIM(0)
            log.debug("heap trimmed after a login burst in %.1f ms", (self.now() - started) * 1000)

    # -- sessions -------------------------------------------------------------------
    async def bind_refusal(self, jid: JID) -> StanzaError | None:
        """The answer to a client binding `jid` here (`server.quotas.bind_verdict`): None,
        or `resource-constraint` when the account holds `quotas.max_sessions_per_user`
        other resources on this node (RFC 6120 §7.6.2.1). At the limit, one of its
        sessions awaiting XEP-0198 resumption is ended instead (its unacknowledged
        messages are routed again). The detached sessions are looked up only then."""
        held = self.ctx.sessions.resources(jid.bare)
        limit = self.config.quotas.max_sessions_per_user
        detached = [r for r in self._resumable.values() if r.connection is None and r.session in held] \
            if len(held) >= limit else []
        verdict = bind_verdict([s.jid.resource or "" for s in held], jid.resource or "", limit, len(detached))
        if verdict is Bind.REFUSE:
            return QuotaExceeded(Quota.SESSIONS, limit).stanza_error()
        if verdict is Bind.END_DETACHED:
            log.info("%s: a detached session gives its place to a new resource (quota %d)", jid.bare, limit)
            await self.end_session(detached[0].session, graceful=False, sm=detached[0].sm)
        return None

    async def bind(self, session: Session, connection: Connection) -> None:
        old = self.ctx.sessions.add(session)
        self._owner[session] = connection
        if old is not None:
            await self._replace(old)

    async def _replace(self, old: Session) -> None:
        connection = self._owner.pop(old, None)
        if connection is None and not any(r.session is old for r in self._resumable.values()):
            old.close()  # a relayed session: its client is connected to another node
            await self.ctx.notify(SessionClosed(old, graceful=False))
            return
        for resume_id, record in list(self._resumable.items()):
            if record.session is old:
                del self._resumable[resume_id]
                self._untrack(resume_id)
                if record.expiry is not None:
                    record.expiry.cancel()
                if connection is None:
                    await self.end_session(old, graceful=False, sm=record.sm)
        if connection is not None:
            connection.session = None  # the stream ends; the session was replaced, not closed
            connection.kick_soon(
                StreamError(StreamCondition.CONFLICT, "replaced by a new connection for this resource"))
            await self.ctx.notify(SessionClosed(old, graceful=False))
            await self._reroute(connection.stream.sm)

    def remember_resumable(self, resume_id: str, session: Session, sm: StreamManagement,
                           connection: Connection) -> Resumable:
        record = self._resumable[resume_id] = Resumable(session, sm, connection)
        if self.replicas is not None:  # replicated to the backup node while it lives
            self.replicas.track(resume_id, session, sm)
        return record

    async def resume_replica(self, previd: str, jid: JID | None, h: int, connection: Connection) -> Resumable | None:
        """The dead peer's session `previd`, restored from its replica and bound to
        `connection`; None if there is none this node may resume (sm_mirror)."""
        if self.replicas is None:
            return None
        restored = await self.replicas.restore(previd, jid, h)
        if restored is None:
            return None
        await self.bind(restored.session, connection)
        announcement = restored.activate()
        record = self.remember_resumable(previd, restored.session, restored.sm, connection)
        connection.run_after(announcement)
        return record

    def replicate_relayed(self, resume_id: str, jid: JID | None, sm: StreamManagement) -> None:
        """A relayed connection's stream (its session lives on the user's node): only
        replicated, so that the client resumes there if this node dies."""
        if self.replicas is not None and jid is not None:
            self.replicas.track(resume_id, Session(jid=jid, send=lambda _stanza, wire=None: None), sm)

    def unreplicate(self, resume_id: str | None) -> None:
        if resume_id and self.replicas is not None and resume_id not in self._resumable:
            self.replicas.untrack(resume_id)

    def _untrack(self, resume_id: str) -> None:
        if self.replicas is not None:  # the session ended: its replica is dropped
            self.replicas.untrack(resume_id)

    def take_over(self, previd: str, jid: JID | None, connection: Connection) -> Resumable | None:
        """The session `previd` for `connection` (authenticated as `jid`), or None."""
        record = self._resumable.get(previd)
        if record is None or jid is None or record.session.bare != jid.bare:
            return None
        if record.expiry is not None:
            record.expiry.cancel()
            record.expiry = None
        old = record.connection
        if old is not None and old is not connection:
            old.session = None
            old.kick_soon(StreamError(StreamCondition.CONFLICT, "this session was resumed on another connection"))
        record.connection = connection
        self._owner[record.session] = connection
        return record

    def unbind_unannounced(self, session: Session, connection: Connection) -> None:
        """Forget a session that nothing was announced for (a backup connection that
        turned out to be an ordinary one, now relayed): no SessionClosed, nothing to route."""
        if self._owner.get(session) is connection:
            del self._owner[session]
        self.ctx.sessions.remove(session)
        for resume_id, record in list(self._resumable.items()):
            if record.session is session:  # its stream stays replicated: it resumes on the user's node
                del self._resumable[resume_id]

    async def connection_finished(self, connection: Connection) -> None:
        if connection.relay is not None:  # its session lives on another node
            await connection.relay.finish(connection.graceful)
            return
        session = connection.session
        if session is None or self._owner.get(session) is not connection:
            return
        del self._owner[session]
        sm = connection.stream.sm
        record = self._resumable.get(sm.resume_id) if sm is not None and sm.resume_id else None
        if record is not None and not connection.closing:
            self._detach(record)
            return
        await self.end_session(session, graceful=connection.graceful, sm=sm, notify=not connection.notified_close)

    def _detach(self, record: Resumable) -> None:
        record.connection = None
        # queued until resumed (XEP-0198 §5); callers pass the serialized form too (`Session.send`)
        record.session.send = lambda stanza, wire=None: record.sm.record_outbound(stanza)
        record.session.close = lambda: self._spawn(self._expire(record))
        record.expiry = asyncio.get_running_loop().call_later(
            self.limits.sm_resume_timeout_s, lambda: self._spawn(self._expire(record))
        )
        log.info("%s detached; resumable for %ss", record.session.jid, self.limits.sm_resume_timeout_s)

    async def _expire(self, record: Resumable) -> None:
        if record.connection is None and self._resumable.get(record.sm.resume_id or "") is record:
            await self.end_session(record.session, graceful=False, sm=record.sm)

    async def end_session(self, session: Session, *, graceful: bool, sm: StreamManagement | None,
                          notify: bool = True) -> None:
        self.ctx.sessions.remove(session)
        if sm is not None and sm.resume_id:
            record = self._resumable.pop(sm.resume_id, None)
            if record is not None and record.expiry is not None:
                record.expiry.cancel()
            self._untrack(sm.resume_id)
        if notify:
            await self.ctx.notify(SessionClosed(session, graceful))
        await self._reroute(sm)

    async def _reroute(self, sm: StreamManagement | None) -> None:
        """XEP-0198 §5: an unacknowledged message was not delivered; route it again."""
        for stanza in sm.take_unacked() if sm is not None else ():
            if stanza.tag == "message" and stanza.get("type") not in ("error", "groupchat"):
                await self.ctx.deliver(stanza)

    # -- shutdown ---------------------------------------------------------------------
    async def shutdown(self, timeout_s: float) -> None:
        for server in self._servers:
            server.close()
        self._stop_lag_watch()
        for session, connection in list(self._owner.items()):
            connection.notified_close = True
            await self.ctx.notify(SessionClosed(session, graceful=True))
        for record in list(self._resumable.values()):
            if record.connection is None:
                await self.end_session(record.session, graceful=True, sm=record.sm)
        if self.hosted is not None:
            shutdown = StreamError(StreamCondition.SYSTEM_SHUTDOWN, "the node is shutting down")
            await self.hosted.close_sessions(lambda _session: True, lambda _username: shutdown)
        for connection in list(self.connections):
            connection.kick_soon(StreamError(StreamCondition.SYSTEM_SHUTDOWN, "the node is shutting down"))
        deadline = self.now() + timeout_s
        while self.connections and self.now() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
        self.derivations.shutdown(wait=False)

    # -- SRM and critical services (server.services, server.srm.runner) ---------------
    # The router service stops and starts the listener; the SRM ends chosen sessions.
    # Closing mirrors `shutdown`: SessionClosed(graceful) first, then the stream error.

    @property
    def listening(self) -> bool:
        return bool(self._servers) and all(server.is_serving() for server in self._servers)

    async def stop_listening(self, error: StreamError | None, timeout_s: float, *, handover: bool = False) -> None:
        """Close the listener, then every connection (bound or not) with `error`. With
        `handover` (the SRM fails this node over) the users move on to the peer with
        their presence: the sessions are demoted first, so their end announces no
        unavailable (the peer restores or retires the shared records, SPEC §8)."""
        for server in self._servers:
            server.close()
        self._servers = []
        self._stop_lag_watch()
        await self.close_sessions(lambda _session: True, lambda _username: error, timeout_s, handover=handover)
        for connection in list(self.connections):
            connection.kick_soon(error)
        await self._wait_gone(set(self.connections), timeout_s)

    async def close_sessions(
        self, chosen: Callable[[Session], bool], error_for: Callable[[str], StreamError | None], timeout_s: float,
        *, handover: bool = False,
    ) -> int:
        """End every chosen session (connected or detached); the stream error comes from
        `error_for(username)`. With `handover` (the users move on to the peer, SPEC §8)
        each chosen session is demoted first, so its end announces no unavailable.
        Returns how many sessions were ended."""
        if handover:
            chosen = _demoting(chosen)
        ended = 0
        for record in list(self._resumable.values()):
            if record.connection is None and chosen(record.session):
                await self.end_session(record.session, graceful=True, sm=record.sm)
                ended += 1
        closing: set[Connection] = set()
        for session, connection in list(self._owner.items()):
            if chosen(session):
                connection.notified_close = True
                await self.ctx.notify(SessionClosed(session, graceful=True))
                connection.kick_soon(error_for(session.jid.local or ""))
                closing.add(connection)
        if self.hosted is not None:
            ended += await self.hosted.close_sessions(chosen, error_for)
        await self._wait_gone(closing, timeout_s)
        return ended + len(closing)

    async def bind_relayed(self, session: Session) -> None:
        """Register a session whose client is connected to another node (it replaces
        a session of the same full JID, wherever that one's client is)."""
        old = self.ctx.sessions.add(session)
        if old is not None:
            await self._replace(old)

    async def _wait_gone(self, connections: set[Connection], timeout_s: float) -> None:
        deadline = self.now() + timeout_s
        while connections & self.connections and self.now() < deadline:
            await asyncio.sleep(0.02)
        for connection in connections & self.connections:
            connection.abort()


def _demoting(chosen: Callable[[Session], bool]) -> Callable[[Session], bool]:
    """`chosen`, demoting (SessionKind.INACTIVE) every session it picks."""
    def pick(session: Session) -> bool:
        if not chosen(session):
            return False
        session.kind = SessionKind.INACTIVE
        return True
    return pick
