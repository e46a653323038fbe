"""The asyncio adapter of one client connection around the sans-IO `XmppStream`.

Rules of this module:
- It moves bytes, runs timers and executes the core's events in order; protocol
  decisions live in `server.xmpp.stream`. Events are handled one at a time under a
  per-connection lock, whether they come from the socket, a timer or another
  connection (a `conflict` kick).
- Limits: a token bucket on inbound bytes (empty -> `policy-violation`), the login
  throttle (`AuthThrottle`, per IP and per user) waited BEFORE the password is
  checked, an auth timer (the core decides whether it still matters), a bounded
  write buffer (a client that stops reading is dropped), the per-address caps (over
  them the stream ends at once) and the port's fair login gate: a connection beyond
  it gets `resource-constraint` in answer to its stream header, before TLS
  (`ClientPort.admit`).
- A value the peer chose is logged through `untrusted` (escaped, truncated).
- A bind waits for the port's answer (`ClientPort.bind_refusal`: the account's
  resource quota, `server.quotas`); after bind the connection registers a `Session`
  through the `ClientPort`, feeds stanzas to `router.dispatch` in arrival order
  (RFC 6120 §10.1), and on the way out
  either detaches the session for XEP-0198 resumption (connection lost with
  resumption on) or ends it (`SessionClosed`, graceful when the stream was closed
  cleanly).
- SPEC §8 backup connections (small, separate: `_backup_*`): a user this node does not
  serve but backs up is admitted; its session is bound INACTIVE and its first stanza
  must be `<hold/>` within the auth timeout, else the stream ends with the refusal
  the login was spared (`server.auth.backup_kick`).
- Relayed connections (small, separate: `_relay_*`; SPEC §2 Balanced mode): a user
  served by another node (`RelayTo`) is admitted when that node is reachable; after
  bind its session is opened there (`port.relay`, `server.cluster.relay`) and every
  stanza is forwarded to it. No local `Session` exists for such a connection, until
  a takeover brings its user here while that node is unreachable: then it becomes
  a local session on the same stream (`become_local`), resumable if the client
  enabled XEP-0198 on it.
- Whether a login is accepted, refused, bound as a backup or relayed is decided by
  `server.admission.decide` (pure), and what a stanza becomes while the presence
  engine is stopped by `server.admission.when_presence_stopped`; this module reads
  the samples they ask for and executes their answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server.admission import (
    Admission,
    Backup,
    Gate,
    LoginSamples,
    Refuse,
    Relay,
    Sample,
    decide,
    when_presence_stopped,
)
from presence_ha.server.auth import RelayTo, backup_kick
from presence_ha.server.net.limits import TokenBucket
from presence_ha.server.net.transport import READ_SIZE, ClientTransport
from presence_ha.server.router import SessionBound
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.tls_binding import TlsBinding
from presence_ha.server.xmpp import events as ev
from presence_ha.server.xmpp.backup import is_hold_request
from presence_ha.server.xmpp.errors import Condition, StanzaError, StreamCondition, StreamError, error_reply
from presence_ha.server.xmpp.jid import InvalidJid, prep_localpart
from presence_ha.server.xmpp.logsafe import untrusted
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition, salted_password
from presence_ha.server.xmpp.stream import StreamSettings, Timer, XmppStream

if TYPE_CHECKING:
    from presence_ha.db.users import LoginRecord
    from presence_ha.server.net.clients import ClientPort
    from presence_ha.server.net.collaborators import RelayedStream

log = logging.getLogger(__name__)
CLOSE_FLUSH_S = 5.0  # how long the closing bytes may take to leave


class _Lost:
    """Queued after the connection's last input: end the connection's session."""


class Connection:
    """One client connection. Input (plaintext from `ClientTransport`) and jobs from
    outside (kicks, timers, `run_after`) are queued and handled one at a time, in
    order, by a worker task that exists only while there is something to do: an idle
    session holds no task."""

    __slots__ = (
        "_attempt",
        "_bucket",
        "_finished",
        "_login",
        "_queue",
        "_queued_bytes",
        "_timer",
        "_worker",
        "authenticated",
        "backup_refusal",
        "backup_relay",
        "closing",
        "counted",
        "gated",
        "gated_at",
        "graceful",
        "ip",
        "notified_close",
        "port",
        "relay",
        "relay_node",
        "session",
        "stream",
        "transport",
    )

    def __init__(self, port: ClientPort, transport: ClientTransport, settings: StreamSettings) -> None:
        self.port = port
        self.transport = transport
        self.ip = transport.peername
        tls = transport.ssl_object  # set already: a direct TLS (XEP-0368) connection
        self.stream = XmppStream(settings, port.rng, port.secret, tls_active=tls is not None,
                                 binding=TlsBinding(tls) if tls is not None else None)
        self.session: Session | None = None
        self.closing = False  # the stream is over (StreamClosed seen)
        self.graceful = False  # ...and it ended cleanly
        self.notified_close = False  # SessionClosed already sent (node shutdown)
        self.backup_refusal: StreamError | None = None  # SPEC §8: admitted as backup, no <hold/> yet
        self.backup_relay: str | None = None  # ...and where its session goes if it is no backup connection
        self.relay_node: str | None = None  # the active node this user's session is relayed to
        self.relay: RelayedStream | None = None  # once that session is open (server.cluster.relay)
        self._login: tuple[str, LoginRecord | None] | None = None  # read for this login's keys
        self._bucket = TokenBucket(port.limits.rate_bytes_per_s, port.limits.rate_burst_bytes, port.now())
        self._queue: deque | None = None  # input and jobs waiting for the worker (None: nothing)
        self._queued_bytes = 0
        self._worker: asyncio.Task[None] | None = None
        self._finished = False
        self._attempt: list[str] | None = None  # throttle keys of the login attempt in flight
        self.gated_at = port.now()
        self.gated = self.counted = self.authenticated = False  # set by the port (admit)
        refusal, at_once = port.admit(self)
        if refusal is not None and at_once:
            log.info("connection from %s refused: %s", self.ip, refusal.text)
            self.kick_soon(refusal)
        elif refusal is not None:
            self.stream.refuse_on_header(refusal)
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            port.limits.auth_timeout_s, self._enqueue, self._fire_auth_timer)

    # -- input from the transport (server.net.transport.Receiver) -------------------------
    def data_received(self, data: bytes) -> None:
        if self.closing or self._finished:
            return  # the stream is over: what the peer still sends is not acted upon
        self._queued_bytes += len(data)
        if self._queued_bytes > READ_SIZE:
            self.transport.pause_reading()  # back-pressure while the worker catches up
        self._enqueue(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            log.debug("connection from %s lost: %s", self.ip, exc)
        self._enqueue(_Lost)

    # -- the worker ------------------------------------------------------------------------
    def _enqueue(self, item) -> None:
        """Queue input (bytes), a job (a coroutine function) or `_Lost`; start the worker."""
        if self._finished:
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._queue:
                item = self._queue.popleft()
                if item is _Lost:
                    await self._finish()
                elif isinstance(item, bytes):
                    await self._received(item)
                else:
                    await item()
        except asyncio.CancelledError:  # the loop is shutting down: nothing runs after this
            self._queue = None
            raise
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("connection from %s failed: %s", self.ip, exc)
            self.transport.abort()
        except Exception:  # a bug must not leave the connection half-alive
            log.exception("connection from %s failed", self.ip)
            self.transport.abort()
        finally:
            self._worker = None
            if not self._queue:
                self._queue = None
            elif not self._finished:  # failed with work left (_Lost among it): the rest runs now
                self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _received(self, data: bytes) -> None:
        self._queued_bytes -= len(data)
        if self._queued_bytes <= READ_SIZE and not self.transport.is_closing():
            self.transport.resume_reading()
        if self.closing:
            return
        if self._bucket.take(len(data), self.port.now()):
            self.stream.receive_data(data)
        else:
            self.stream.close(StreamError(StreamCondition.POLICY_VIOLATION, "rate limit exceeded"))
        await self._run_events()
        await self.transport.drain()

    async def _run_events(self) -> None:
        while events := self.stream.events():
            for event in events:
                await _HANDLERS[type(event)](self, event)

    async def _finish(self) -> None:
        """The connection is gone: its session ends or waits for resumption."""
        if self._finished:
            return
        self._finished = True
        self._queue = None
        if self.relay_node is not None and self.stream.sm is not None:
            self.port.unreplicate(self.stream.sm.resume_id)  # its session ends with the relay
        self._leave_gate()
        self.port.connection_uncounted(self)
        if self._attempt is not None:
            self.port.throttle.release(self._attempt)
            self._attempt = None
        if self._timer is not None:
            self._timer.cancel()
        try:
            await self.port.connection_finished(self)
        finally:
            self.port.connections.discard(self)

    def leave_gate(self) -> None:
        """Give the login-gate place back (the port makes room for another address)."""
        self._leave_gate()

    def _leave_gate(self, completed: bool = False) -> None:
        if completed:
            self.port.connection_authenticated(self)
        if self.gated:
            self.gated = False
            self.port.login_done(completed, self.gated_at, self)
        if completed and self._timer is not None:  # bound or resumed: the auth timer is moot
            self._timer.cancel()
            self._timer = None

    async def _fire_auth_timer(self) -> None:
        self.stream.timer_fired(Timer.AUTH)
        await self._run_events()

    async def _kick(self, error: StreamError | None) -> None:
        self.stream.close(error)
        await self._run_events()

    def kick_soon(self, error: StreamError | None) -> None:
        """End the stream from outside (conflict, shutdown, the SRM moving users)."""
        self._enqueue(functools.partial(self._kick, error))

    def run_after(self, coro) -> None:
        """Run `coro` once the input and jobs queued before it are handled."""
        async def job() -> None:
            await coro
        self._enqueue(job)

    def abort(self) -> None:
        self.transport.abort()

    # -- writing ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not data or self.transport.is_closing():
            return
        self.transport.write(data)
        if self.transport.write_buffer_size() > self.port.limits.max_write_buffer_bytes:
            log.warning("%s does not read its stream; dropping the connection",
                        self.session.jid if self.session else self.ip)
            self.transport.abort()

    def send_stanza(self, stanza: ET.Element, wire: bytes | None = None) -> None:
        """`Session.send` while this connection owns the session."""
        data = self.stream.send_stanza(stanza, wire)
        if data:
            self.port.metrics.stanzas_out.inc()
            self.write(data)

    # -- event handlers -------------------------------------------------------------
    async def _on_outgoing(self, event: ev.Outgoing) -> None:
        sm = self.stream.sm
        if sm is not None and sm.mirror is not None:  # an <a h=''/> waits for the backup's copy (sm_mirror)
            await sm.mirror.before_output(event.data)
        self.write(event.data)

    async def _on_tls_requested(self, _event: ev.TlsRequested) -> None:
        early = self._take_queued_input()  # a ClientHello that came while <starttls/> was handled
        try:
            await self.transport.start_tls(self.port.ssl_context, self.port.limits.auth_timeout_s, early)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            log.info("TLS handshake with %s failed: %s", self.ip, exc)
            self.transport.abort()
            self.closing = True
            return
        tls = self.transport.ssl_object
        self.stream.tls_established(TlsBinding(tls) if tls is not None else None)

    def _take_queued_input(self) -> bytes:
        """Remove the input bytes queued now (jobs stay queued, in order)."""
        if not self._queue:
            return b""
        data = [item for item in self._queue if isinstance(item, bytes)]
        if data:
            self._queue = deque(item for item in self._queue if not isinstance(item, bytes))
            self._queued_bytes -= sum(map(len, data))
        return b"".join(data)

    async def _on_credentials_requested(self, event: ev.CredentialsRequested) -> None:
        if not self.port.auth.on:  # SPEC §4: the authentication service is stopped
            self.stream.credentials_unavailable("authentication service stopped, retry later")
            return
        if not await self._throttled(event.username):
            return
        try:
            record = await self.port.accounts.lookup(event.username, event.mechanism)
        except DatabaseUnavailable as exc:
            log.warning("cannot read credentials of %s: %s", untrusted(event.username), exc)
            self.stream.credentials_unavailable("database unavailable, retry later")
            return
        self._login = (event.username, record)  # its location answers PasswordVerified
        self.stream.credentials_found(record.credentials if record is not None else None)

    def _throttle_keys(self, username: str | None) -> list[str]:
        keys = [f"ip:{self.ip}"]
        if username:
            try:
                keys.append(f"user:{prep_localpart(username)}")
            except InvalidJid:
                keys.append("user:")  # no such account can exist: one key for all such names
        return keys

    async def _throttled(self, username: str) -> bool:
        """Wait for this attempt's turn under the login throttle, before the password is
        checked (`AuthThrottle.reserve`); False if it was refused (answered already)."""
        keys = self._throttle_keys(username)
        wait = self.port.throttle.reserve(keys, self.port.now())
        if wait is None:
            log.info("login attempt from %s as %s refused unchecked: throttled", self.ip, untrusted(username))
            self.stream.credentials_unavailable("too many login attempts for this account or address; retry later")
            return False
        self._attempt = keys
        if wait:
            await asyncio.sleep(wait)  # a success waits like a failure (RFC 6120 §13.10)
            if self.transport.is_closing() or self.closing:
                self.port.throttle.release(keys)  # gone meanwhile: nothing is checked
                self._attempt = None
                return False
        return True

    def _attempt_done(self, username: str | None, success: bool | None) -> None:
        """The password of this attempt was checked (`success`), or not (None)."""
        keys, self._attempt = self._attempt, None
        if success is None:
            if keys is not None:
                self.port.throttle.release(keys)
            return
        self.port.throttle.resolve(keys or self._throttle_keys(username), self.port.now(), success)

    async def _on_derivation_requested(self, event: ev.DerivationRequested) -> None:
        # PBKDF2 (4,096 rounds) was ~11% of login CPU on the event loop; in the port's
        # worker threads it runs beside it (hashlib releases the GIL).
        salted = await asyncio.get_running_loop().run_in_executor(
            self.port.derivations, salted_password, event.password, event.salt, event.iterations
        )
        self.stream.password_derived(salted)

    async def _on_password_verified(self, event: ev.PasswordVerified) -> None:
        """Execute the one admission decision (`server.admission.decide`), reading only
        the samples it asks for."""
        self._attempt_done(event.username, success=True)
        try:
            decision = await self._admission(event.username)
        except DatabaseUnavailable as exc:
            log.warning("cannot locate %s: %s", untrusted(event.username), exc)
            decision = Refuse(SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, "database unavailable, retry later"))
        if isinstance(decision, Backup):  # SPEC §8 inactive bind
            self.backup_refusal, self.backup_relay = backup_kick(decision.spared), decision.relay
        elif isinstance(decision, Relay):  # served by another node: relay (SPEC §2)
            self.relay_node = decision.node
        if isinstance(decision, Refuse):
            log.info("login of %s refused here: %s", untrusted(event.username), decision.failure)
            self.stream.refuse_login(decision.failure)
        else:
            self.stream.accept_login()

    async def _admission(self, username: str) -> Admission:
        record = await self._login_record(username)
        if record is None or record.active_node != self.port.accounts.node_name:
            # Not served here, as of the keys' read: look again (users move around
            # failovers), and decide every branch on that one answer.
            record = await self.port.accounts.lookup(username, "")
        assigned, active = (record.assigned_node, record.active_node) if record else (None, None)
        where = await self.port.accounts.login_refusal(username, active)
        if isinstance(where, RelayTo):
            samples = LoginSamples(where.fallback, where.node, where.text, can_relay=self.port.relay is not None)
        else:
            samples = LoginSamples(where)
        while isinstance(decision := decide(samples), Sample):
            samples = samples.with_sample(decision, await self._sample(decision, username, active, assigned, samples))
        return decision

    async def _sample(self, sample: Sample, username: str, active: str | None, assigned: str | None,
                      samples: LoginSamples) -> bool | SaslFailure | None:
        if sample is Sample.BACKS_UP:
            return await self.port.accounts.backs_up(active)
        if sample is Sample.RELAY:
            assert self.port.relay is not None and samples.relay_node is not None
            return self.port.relay.refusal(username, samples.relay_node)
        if self.port.admission is None:  # the SRM's state (SPEC §6)
            return None
        return await self.port.admission(username, assigned)

    async def _login_record(self, username: str):
        """The record `lookup` read when this login asked for its keys (one read per
        login: keys, then location a round trip later at most); read again otherwise."""
        stashed, self._login = self._login, None
        if stashed is not None and stashed[0] == username:
            return stashed[1]
        return await self.port.accounts.lookup(username, "")

    async def _on_auth_failed(self, event: ev.AuthFailed) -> None:
        self.port.metrics.auth_failures.inc()
        if event.condition in (SaslCondition.ABORTED, SaslCondition.TEMPORARY_AUTH_FAILURE):
            self._attempt_done(event.username, success=None)
            return
        self._attempt_done(event.username, success=False)  # the next attempt waits (`_throttled`)
        log.info("failed login from %s as %s (%s)", self.ip, untrusted(event.username), event.condition.value)

    async def _on_registration_requested(self, event: ev.RegistrationRequested) -> None:
        try:
            error = await self.port.accounts.register(event.username, event.password)
        except DatabaseUnavailable:
            error = StanzaError(Condition.INTERNAL_SERVER_ERROR, "database unavailable")
        self.stream.registration_done(error)

    async def _on_bind_requested(self, event: ev.BindRequested) -> None:
        # A relayed session is counted where it is served (`RelayHost` refuses it there).
        self.stream.bind_done(None if self.relay_node is not None else await self.port.bind_refusal(event.jid))

    async def _on_resource_bound(self, event: ev.ResourceBound) -> None:
        self._leave_gate(completed=True)
        if self.relay_node is not None:
            await self._relay_bound(event)
            return
        session = Session(jid=event.jid, send=self.send_stanza, close=self._close_session)
        if self.backup_refusal is not None:
            self._backup_bound(session)
        session.client_active = self.stream.client_active
        self.session = session
        await self.port.bind(session, self)
        await self.port.ctx.notify(SessionBound(session))

    # -- SPEC §8 backup connections ------------------------------------------------
    def _backup_bound(self, session: Session) -> None:
        session.kind = SessionKind.INACTIVE
        asyncio.get_running_loop().call_later(self.port.limits.auth_timeout_s, self._enqueue, self._backup_expired)

    async def _backup_claimed(self, stanza: ET.Element) -> bool:
        """The first stanza of a backup connection: `<hold/>` keeps it; anything else is
        a client that does not know the backup protocol: its session is relayed to the
        user's node (SPEC §2), or, where it cannot be, the stream ends with the refusal
        the login was spared."""
        if is_hold_request(stanza):
            self.backup_refusal = self.backup_relay = None
            return True
        if self.backup_relay is not None and self.session is not None:
            await self._relay_instead(self.session, self.backup_relay, stanza)
            return False
        log.info("%s bound on its backup node without <hold/>: %s", self.session.jid if self.session else self.ip,
                 self.backup_refusal)
        self.stream.close(self.backup_refusal)
        return False

    async def _relay_instead(self, session: Session, node: str, first: ET.Element) -> None:
        """The INACTIVE session was only waiting for `<hold/>` (nothing was announced for
        it): forget it here and host the session on the user's node instead, as for a
        user of another group; `first` is its first stanza."""
        log.info("%s bound on its backup node without <hold/>: relayed to %s", session.jid, node)
        self.backup_refusal = self.backup_relay = None
        self.port.unbind_unannounced(session, self)
        self.session, self.relay_node = None, node
        assert self.port.relay is not None
        outcome = await self.port.relay.open(self, session.jid, node)
        if isinstance(outcome, StreamError):
            self.stream.close(outcome)
            return
        self.relay = outcome
        await outcome.forward(first)

    async def _backup_expired(self) -> None:
        if self.backup_refusal is not None and not self.closing:
            await self._kick(self.backup_refusal)

    # -- relayed connections (server.cluster.relay) ------------------------------------
    async def _relay_bound(self, event: ev.ResourceBound) -> None:
        assert self.port.relay is not None and self.relay_node is not None
        outcome = await self.port.relay.open(self, event.jid, self.relay_node)
        if isinstance(outcome, StreamError):
            self.stream.close(outcome)
        else:
            self.relay = outcome

    async def become_local(self) -> Session | None:
        """A takeover brought this relayed connection's user here (its host died): the
        session is local from now on, on the same stream, bound in the port and
        resumable if the client enabled XEP-0198. Runs at once, not after the queued
        input (a forward to the dead host may be waiting there). Its presence is the
        caller's (`server.activation.turn_active`); the client notices nothing. None if
        the connection is no longer relayed or is ending."""
        jid = self.stream.jid  # full: the relay opened after bind
        if self.relay is None or jid is None or self.closing or self._finished:
            return None
        self.relay = self.relay_node = None
        session = Session(jid=jid, send=self.send_stanza, close=self._close_session)
        session.client_active = self.stream.client_active
        session.interested = True  # its roster request went to the dead node (standard clients make one)
        self.session = session
        await self.port.bind(session, self)
        sm = self.stream.sm
        if sm is not None and sm.resume_id:
            self.port.remember_resumable(sm.resume_id, session, sm, self)
        log.info("%s: relayed session taken over here (resumable: %s)", jid, bool(sm and sm.resume_id))
        return session

    def replay(self, stanza: ET.Element) -> None:
        """Handle `stanza` in turn as if the client had just sent it."""
        self._enqueue(functools.partial(self._on_stanza, ev.StanzaReceived(stanza)))

    def _close_session(self) -> None:
        self.kick_soon(StreamError(StreamCondition.SYSTEM_SHUTDOWN, "session closed by the server"))

    async def _on_resume_requested(self, event: ev.ResumeRequested) -> None:
        found = self.port.take_over(event.previd, self.stream.jid, self)
        if found is None:  # a session of the dead peer (sm_mirror)
            found = await self.port.resume_replica(event.previd, self.stream.jid, event.h, self)
            if found is not None:
                self.backup_refusal = self.backup_relay = self.relay_node = None  # served here now
        if found is None:
            self.stream.resume_refused()
            return
        self.session = found.session
        self.stream.resume_accepted(found.session.jid, found.sm, event.h)

    async def _on_session_resumed(self, event: ev.SessionResumed) -> None:
        assert self.session is not None
        self._leave_gate(completed=True)
        self.session.send = self.send_stanza
        self.session.close = self._close_session
        log.info("%s resumed its session", event.jid)

    async def _on_sm_enabled(self, event: ev.StreamManagementEnabled) -> None:
        if event.resume_id is not None and self.session is not None and self.stream.sm is not None:
            self.port.remember_resumable(event.resume_id, self.session, self.stream.sm, self)
        elif event.resume_id is not None and self.relay_node is not None and self.stream.sm is not None:
            # Relayed: the stream is replicated to this node's peer (the user's node in a
            # pair), where the client resumes if this node dies (sm_mirror.park).
            self.port.replicate_relayed(event.resume_id, self.stream.jid, self.stream.sm)

    async def _on_client_state(self, event: ev.ClientStateChanged) -> None:
        if self.session is not None:
            self.session.client_active = event.active

    async def _on_stanza(self, event: ev.StanzaReceived) -> None:
        if self.relay_node is not None:  # relayed: the active node routes it
            self.port.metrics.stanzas_in.inc()
            if self.relay is not None:
                await self.relay.forward(event.stanza)
            return
        if self.session is None:  # the session ended (replaced, closed) while this stanza was in flight
            log.debug("dropped a %s that arrived after its session ended", untrusted(event.stanza.tag))
            return
        self.port.metrics.stanzas_in.inc()
        if self.backup_refusal is not None and not await self._backup_claimed(event.stanza):
            return
        if not self.port.presence.on and self._presence_engine_stopped(event.stanza):
            return  # SPEC §4/§6: no presence, no IM
        try:
            await self.port.ctx.router.dispatch(self.port.ctx, self.session, event.stanza)
        except DatabaseUnavailable as exc:  # the router answers handler faults; this is below it
            log.warning("database unavailable while routing from %s: %s", self.session.jid, exc)

    def _presence_engine_stopped(self, stanza: ET.Element) -> bool:
        """Execute `when_presence_stopped`; True if the stanza goes no further."""
        gate = when_presence_stopped(stanza.tag, stanza.get("type"))
        if gate is Gate.BOUNCE:
            self.send_stanza(error_reply(stanza, StanzaError(Condition.SERVICE_UNAVAILABLE, "presence engine stopped")))
        return gate is not Gate.PASS

    async def _on_stream_closed(self, event: ev.StreamClosed) -> None:
        if event.error is not None:
            self.port.metrics.stream_errors.labels(event.error.condition.value).inc()
            log.info("stream error to %s: %s", self.session.jid if self.session else self.ip, untrusted(event.error))
        self.closing = True
        self.graceful = event.by_peer or event.error is None
        try:
            await asyncio.wait_for(self.transport.drain(), timeout=CLOSE_FLUSH_S)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            self.transport.abort()  # a peer that does not read its last bytes
        self._close_transport()

    def _close_transport(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
            # A peer that never reads its last bytes does not keep the connection.
            asyncio.get_running_loop().call_later(CLOSE_FLUSH_S, self._abort_unless_lost)

    def _abort_unless_lost(self) -> None:
        if not self.transport.lost:
            self.transport.abort()


# One dispatch table for all connections (a dict of bound methods per connection cost
# ~1.3 kB of every idle session): event type -> handler, called with the connection.
_HANDLERS: dict[type[ev.Event], Callable[[Connection, Any], Awaitable[None]]] = {
    ev.Outgoing: Connection._on_outgoing,
    ev.TlsRequested: Connection._on_tls_requested,
    ev.CredentialsRequested: Connection._on_credentials_requested,
    ev.DerivationRequested: Connection._on_derivation_requested,
    ev.PasswordVerified: Connection._on_password_verified,
    ev.AuthFailed: Connection._on_auth_failed,
    ev.RegistrationRequested: Connection._on_registration_requested,
    ev.BindRequested: Connection._on_bind_requested,
    ev.ResourceBound: Connection._on_resource_bound,
    ev.ResumeRequested: Connection._on_resume_requested,
    ev.SessionResumed: Connection._on_session_resumed,
    ev.StreamManagementEnabled: Connection._on_sm_enabled,
    ev.ClientStateChanged: Connection._on_client_state,
    ev.StanzaReceived: Connection._on_stanza,
    ev.StreamClosed: Connection._on_stream_closed,
}
