"""The asyncio adapter that executes `client.policy.DualPolicy` (SPEC §8): `DualClient`.

Rules of this module:
- No decisions here: events go into the policy, its actions are executed in order
  (connect, close, IQs, timers). Slow actions (logins, IQs) run as tasks whose outcome
  is fed back as the next event.
- Connection slots: one ACTIVE and one INACTIVE `NodeConnection`. A report from a
  connection that no longer holds a slot (closed by us, superseded) is ignored.
- The application sees typed events through listeners (`add_listener`): received
  messages, contacts' presence, and every connection event stamped with wall-clock
  ISO time and monotonic milliseconds, so downtime can be measured.
- Nothing sent is lost with a node: what the active connection's node never
  acknowledged (XEP-0198, `NodeConnection.take_unacked`) is sent again, with the same
  stanza ids, on the next active connection (the activated backup, or a new login),
  as an XEP-0198 client does after a failed resumption. Received messages go through
  `client.delivery.RecentIds` (the last 512 ids, twice the outbox limit, of each of
  the last 1,024 senders), so a message that arrives twice reaches the application
  once. `resent` and `duplicates_dropped` count both.
- Library API: `DualClient(jid, password, server)`, `await start()`, `send_message`,
  `set_presence`, `roster`, `await stop()`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar

from presence_ha.client.connection import BackupRefused, ConnectionHooks, LoginFailed, NodeConnection, OutMessage
from presence_ha.client.delivery import RecentIds
from presence_ha.client.policy import (
    Action,
    Activate,
    ActivationDone,
    ActivationRefused,
    BackupInfoReceived,
    CancelTimer,
    Connect,
    Connected,
    ConnectFailed,
    ConnectionLost,
    Disconnect,
    DualPolicy,
    Endpoint,
    Event,
    HoldRefused,
    Link,
    PolicyConfig,
    Promote,
    QueryBackup,
    Report,
    Role,
    SendPresence,
    Started,
    StartTimer,
    Stopped,
    Timer,
    TimerFired,
)

log = logging.getLogger(__name__)


class LoginError(Exception):
    """The first login did not succeed."""


@dataclass(frozen=True)
class ConnectionEvent:
    kind: str  # connecting, connected, held, login-failed, lost, activated, resent, backup, decision, stopped
    role: Role | None
    endpoint: Endpoint | None
    detail: str
    wall: str  # ISO 8601, UTC
    mono_ms: float  # time.monotonic() in milliseconds


@dataclass(frozen=True)
class MessageReceived:
    sender: str
    body: str
    type: str
    via: Role | None  # the role of the connection it came on
    stanza_id: str = ""


@dataclass(frozen=True)
class PresenceChanged:
    jid: str
    available: bool
    show: str
    status: str
    via: Role | None


ClientEvent = ConnectionEvent | MessageReceived | PresenceChanged


@dataclass
class RosterItem:
    jid: str
    name: str = ""
    subscription: str = "none"
    presences: dict[str, tuple[str, str]] = field(default_factory=dict)  # full JID -> (show, status)


class DualClient:
    def __init__(self, jid: str, password: str, server: Endpoint | str, *, dual: bool = True, insecure: bool = False,
                 rng: random.Random | None = None, **policy_options: Any) -> None:
        home = server if isinstance(server, Endpoint) else Endpoint.parse(server)
        self.jid, self._password, self._insecure = jid, password, insecure
        self.policy = DualPolicy(PolicyConfig(home=home, dual=dual, **policy_options), rng or random.Random())
        self._conns: dict[Role, NodeConnection | None] = {Role.ACTIVE: None, Role.INACTIVE: None}
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[Callable[[ClientEvent], None]] = []
        self._first: asyncio.Future[None] | None = None
        self._made: list[NodeConnection] = []  # every connection, to wait for at stop
        self.show, self.status = "", ""
        self.roster: dict[str, RosterItem] = {}
        self._resend: list[OutMessage] = []  # never acknowledged by a lost node, for the next active connection
        self._recent = RecentIds()
        self.resent = 0  # messages sent again after a failover
        self._hooks = ConnectionHooks(self._on_lost, self._on_message, self._on_presence, self._on_push)

    # -- public API ---------------------------------------------------------------------
    def add_listener(self, listener: Callable[[ClientEvent], None]) -> None:
        self._listeners.append(listener)

    def connection(self, role: Role) -> NodeConnection | None:
        return self._conns[role]

    @property
    def duplicates_dropped(self) -> int:
        """Messages that arrived a second time (a sender's resend) and were not reported again."""
        return self._recent.dropped

    @property
    def active_endpoint(self) -> Endpoint | None:
        return self.policy.state.active_endpoint if self.policy.state.active is Link.UP else None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Log in; return once the first active session is up (else `LoginError`)."""
        self._first = asyncio.get_running_loop().create_future()
        self._feed(Started())
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout_s)
        except (TimeoutError, LoginError) as exc:
            await self.stop()
            raise LoginError(str(exc) or f"no session within {timeout_s}s") from None

    async def stop(self) -> None:
        self._feed(Stopped())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self._made:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in self._made))
        self._emit_conn("stopped", None, None, "")

    def send_message(self, to: str, body: str) -> str | None:
        """Send a chat message on the active connection: its stanza id, or None when there
        is no active connection (nothing sent)."""
        conn = self._conns[Role.ACTIVE]
        if conn is None or self.policy.state.active is not Link.UP:
            return None
        return conn.send_message(to, body)

    def set_presence(self, show: str = "", status: str = "") -> None:
        self.show, self.status = show, status
        conn = self._conns[Role.ACTIVE]
        if conn is not None and self.policy.state.active is Link.UP:
            conn.send_presence(show, status)

    # -- policy plumbing -----------------------------------------------------------------
    def _feed(self, event: Event) -> None:
        for action in self.policy.handle(event):
            self._execute(action)

    def _execute(self, action: Action) -> None:
        handler = self._ACTIONS[type(action)]
        handler(self, action)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _slot(self, conn: NodeConnection) -> Role | None:
        return next((role for role, held in self._conns.items() if held is conn), None)

    # -- actions ---------------------------------------------------------------------------
    def _do_connect(self, a: Connect) -> None:
        conn = NodeConnection(self.jid, self._password, a.endpoint, self._hooks, insecure=self._insecure)
        self._conns[a.role] = conn
        self._made.append(conn)
        self._emit_conn("connecting", a.role, a.endpoint, "")
        self._spawn(self._open(a.role, conn))

    async def _open(self, role: Role, conn: NodeConnection) -> None:
        try:
            await conn.open()
            held = await conn.hold() if role is Role.INACTIVE else True
        except (LoginFailed, BackupRefused) as exc:
            conn.close()
            if self._slot(conn) is role:
                self._conns[role] = None
                self._emit_conn("login-failed", role, conn.endpoint, str(exc))
                self._login_failed(role, exc)
            return
        if self._slot(conn) is not role:
            conn.close()  # superseded while logging in
            return
        self._emit_conn("connected" if role is Role.ACTIVE else "held", role, conn.endpoint, conn.jid)
        if role is Role.ACTIVE:
            self._session_started(conn)
        self._feed(Connected(role) if held else HoldRefused())

    def _login_failed(self, role: Role, exc: Exception) -> None:
        redirect = exc.redirect if isinstance(exc, LoginFailed) else None
        if role is Role.ACTIVE and self._first is not None and not self._first.done() and redirect is None:
            self._first.set_exception(LoginError(str(exc)))
        self._feed(ConnectFailed(role, redirect, str(exc)))

    def _session_started(self, conn: NodeConnection) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        self._spawn(self._load_roster(conn))
        conn.send_presence(self.show, self.status)
        self._flush_resend(conn)

    def _flush_resend(self, conn: NodeConnection) -> None:
        """Send again, on the new active connection, what the old one's node never acknowledged."""
        pending, self._resend = self._resend, []
        for msg in pending:
            conn.send_message(msg.to, msg.body, msg.stanza_id)
        if pending:
            self.resent += len(pending)
            self._emit_conn("resent", Role.ACTIVE, conn.endpoint,
                            f"{len(pending)} message(s) the previous node never acknowledged")

    async def _load_roster(self, conn: NodeConnection) -> None:
        try:
            items = await conn.roster()
        except Exception as exc:  # noqa: BLE001 -- roster view only; the session carries on without it
            log.warning("roster not loaded from %s: %s", conn.endpoint, exc)
            return
        for jid, name, subscription in items:
            item = self.roster.setdefault(jid, RosterItem(jid))
            item.name, item.subscription = name, subscription

    def _do_disconnect(self, a: Disconnect) -> None:
        conn, self._conns[a.role] = self._conns[a.role], None
        if conn is not None:
            conn.close()

    def _do_query_backup(self, _a: QueryBackup) -> None:
        conn = self._conns[Role.ACTIVE]
        if conn is not None:
            self._spawn(self._query_backup(conn))

    async def _query_backup(self, conn: NodeConnection) -> None:
        info = await conn.query_backup()
        if self._slot(conn) is Role.ACTIVE:
            detail = f"{info.node} at {info.endpoint}" if info.node else f"none ({info.reason})"
            self._emit_conn("backup", Role.ACTIVE, conn.endpoint,
                            f"{detail}; relogin {info.relogin_lower_s:g}-{info.relogin_upper_s:g}s")
            self._feed(BackupInfoReceived(info))

    def _do_activate(self, _a: Activate) -> None:
        conn = self._conns[Role.INACTIVE]
        if conn is not None:
            self._spawn(self._activate(conn))

    async def _activate(self, conn: NodeConnection) -> None:
        try:
            restored = await conn.activate()
        except BackupRefused as exc:
            if self._slot(conn) is Role.INACTIVE:
                self._emit_conn("decision", Role.INACTIVE, conn.endpoint, f"activation refused: {exc}")
                self._feed(ActivationRefused(retry=exc.etype == "wait", detail=str(exc)))
            return
        if self._slot(conn) is Role.INACTIVE:
            self._feed(ActivationDone(restored))

    def _do_promote(self, _a: Promote) -> None:
        old, new = self._conns[Role.ACTIVE], self._conns[Role.INACTIVE]
        self._conns[Role.ACTIVE], self._conns[Role.INACTIVE] = new, None
        if old is not None and not old.closed:
            # Make before break: the old session goes last; what it has not had
            # acknowledged yet goes again on the new one (a copy is dropped by receivers).
            self._resend.extend(old.take_unacked())
            self._spawn(old.retire())
        if new is not None:
            self._emit_conn("activated", Role.ACTIVE, new.endpoint, new.jid)
            self._spawn(self._load_roster(new))
            self._flush_resend(new)

    def _do_send_presence(self, _a: SendPresence) -> None:
        conn = self._conns[Role.ACTIVE]
        if conn is not None:
            conn.send_presence(self.show, self.status)

    def _do_start_timer(self, a: StartTimer) -> None:
        self._do_cancel_timer(CancelTimer(a.timer))
        self._timers[a.timer] = asyncio.get_running_loop().call_later(a.seconds, self._timer_fired, a.timer)

    def _timer_fired(self, timer: Timer) -> None:
        self._timers.pop(timer, None)
        self._feed(TimerFired(timer))

    def _do_cancel_timer(self, a: CancelTimer) -> None:
        handle = self._timers.pop(a.timer, None)
        if handle is not None:
            handle.cancel()

    def _do_report(self, a: Report) -> None:
        self._emit_conn("decision", None, None, a.text)

    _ACTIONS: ClassVar[dict[type, Callable[[DualClient, Any], None]]] = {
        Connect: _do_connect, Disconnect: _do_disconnect, QueryBackup: _do_query_backup, Activate: _do_activate,
        Promote: _do_promote, SendPresence: _do_send_presence, StartTimer: _do_start_timer,
        CancelTimer: _do_cancel_timer, Report: _do_report,
    }

    # -- connection reports --------------------------------------------------------------
    def _on_lost(self, conn: NodeConnection, redirect: Endpoint | None, detail: str) -> None:
        role = self._slot(conn)
        if role is None:
            return
        self._conns[role] = None
        if role is Role.ACTIVE:
            self._resend.extend(conn.take_unacked())
        self._emit_conn("lost", role, conn.endpoint, detail + (f"; redirected to {redirect}" if redirect else ""))
        self._feed(ConnectionLost(role, redirect, detail))

    def _on_push(self, conn: NodeConnection, restored: bool) -> None:
        if self._slot(conn) is Role.INACTIVE:
            self._feed(ActivationDone(restored, by_server=True))

    def _on_message(self, conn: NodeConnection, sender: str, mtype: str, body: str, stanza_id: str) -> None:
        if self._recent.first(sender.split("/", 1)[0], stanza_id):
            self._emit(MessageReceived(sender, body, mtype, self._slot(conn), stanza_id))

    def _on_presence(self, conn: NodeConnection, jid: str, available: bool, show: str, status: str) -> None:
        bare = jid.split("/", 1)[0]
        item = self.roster.setdefault(bare, RosterItem(bare))
        if available:
            item.presences[jid] = (show, status)
        else:
            item.presences.pop(jid, None)
        self._emit(PresenceChanged(jid, available, show, status, self._slot(conn)))

    def _emit_conn(self, kind: str, role: Role | None, endpoint: Endpoint | None, detail: str) -> None:
        wall = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        self._emit(ConnectionEvent(kind, role, endpoint, detail, wall, time.monotonic() * 1000))

    def _emit(self, event: ClientEvent) -> None:
        for listener in self._listeners:
            listener(event)
