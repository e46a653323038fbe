"""The dual-connection policy of a client (SPEC §8): a pure, sans-IO core.

Rules of this module:
- No I/O, no asyncio, no clock, no `random` module state: facts come in as events
  (`handle(event) -> list[Action]`), time only as `TimerFired(timer)`, randomness from
  the injected `random.Random`. The adapter (`client.dual`) executes actions in order.
- Two links, each DOWN, CONNECTING or UP: the ACTIVE connection (presence and
  traffic) and the INACTIVE one (bound on the backup node, no traffic). The state is
  readable, not writable.
- After the active connection is up the client asks for its backup (`QueryBackup`).
  With a backup offered (dual mode), it opens the inactive connection after a random
  delay in [relogin lower, relogin upper] of its node; with none (HA off) it opens none.
- The active connection lost (crash, failover; or a see-other-host redirect to the
  inactive connection's node) with the inactive one up: `Activate`, retried every
  `activate_retry_s` while the backup answers "not serving yet", until
  `activation_timeout_s`. Done (the answer, or the server's push): `Promote` (the
  inactive connection becomes the active one; the old one is closed: make before
  break on fallback), `SendPresence` unless the server restored it, and `QueryBackup`
  for the next inactive connection.
- Without a usable inactive connection the client logs in again:
  * dual mode with a peer known (the backup the server named, or a redirect target),
    e.g. the inactive connection was not open yet or was lost: at once, to the
    redirect target or else that peer (issue 18: a failover must not strand the
    client for the re-login delay). A login that fails meanwhile is retried with
    full-jitter exponential backoff (`failover_retry_s`: base, cap) to the same peer,
    up to `failover_attempts` times; after that, the re-login delay.
  * single mode, or no peer known (HA off): SPEC §8, at once to the redirect target
    if the server named one (a planned move, e.g. a fallback), else after a random
    delay in the re-login limits to the next known node (home, backup) other than
    the lost one.
  A redirect while logging in is followed at once (at most `max_login_redirects`).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_RELOGIN_S = (120, 537)  # SPEC §5 defaults, until the node tells its own


class Role(enum.Enum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class Link(enum.Enum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"


class Timer(enum.Enum):
    OPEN_INACTIVE = "open-inactive"
    RELOGIN = "relogin"
    ACTIVATE_RETRY = "activate-retry"
    ACTIVATION_TIMEOUT = "activation-timeout"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int = 5222) -> Endpoint:
        """`host`, `host:port` or `[v6]:port` (RFC 6120 §4.9.3.19 see-other-host text)."""
        text = text.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            return cls(host, int(rest[1:]) if rest.startswith(":") else default_port)
        host, sep, port = text.rpartition(":")
        return cls(host, int(port)) if sep and host and ":" not in host else cls(text, default_port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BackupInfo:
    """The server's answer to the backup query (docs/xep-presence-ha-backup.md §3)."""

    node: str | None  # None: no backup offered
    endpoint: Endpoint | None
    relogin_lower_s: float
    relogin_upper_s: float
    reason: str | None = None  # why none is offered (ha-disabled, no-peer, unsupported)


# --- events (facts) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    """The application started the client."""


@dataclass(frozen=True)
class Stopped:
    """The application stopped the client."""


@dataclass(frozen=True)
class Connected:
    """The connection is bound (INACTIVE: and its `<hold/>` was accepted)."""

    role: Role


@dataclass(frozen=True)
class ConnectFailed:
    role: Role
    redirect: Endpoint | None = None
    detail: str = ""


@dataclass(frozen=True)
class ConnectionLost:
    role: Role
    redirect: Endpoint | None = None
    detail: str = ""


@dataclass(frozen=True)
class BackupInfoReceived:
    info: BackupInfo


@dataclass(frozen=True)
class HoldRefused:
    """The inactive connection's node serves the user already (`<served-here/>`)."""


@dataclass(frozen=True)
class ActivationDone:
    presence_restored: bool
    by_server: bool = False  # the server's push rather than the answer to `Activate`


@dataclass(frozen=True)
class ActivationRefused:
    retry: bool  # True: the backup does not serve the user yet (type wait)
    detail: str = ""


@dataclass(frozen=True)
class TimerFired:
    timer: Timer


Event = (Started | Stopped | Connected | ConnectFailed | ConnectionLost | BackupInfoReceived | HoldRefused
         | ActivationDone | ActivationRefused | TimerFired)


# --- actions (commands) -----------------------------------------------------------------
@dataclass(frozen=True)
class Connect:
    role: Role
    endpoint: Endpoint


@dataclass(frozen=True)
class Disconnect:
    role: Role


@dataclass(frozen=True)
class QueryBackup:
    """Ask the active connection's node for the backup (IQ get `<backup/>`)."""


@dataclass(frozen=True)
class Activate:
    """Send IQ set `<activate/>` on the inactive connection."""


@dataclass(frozen=True)
class Promote:
    """The inactive connection becomes the active one; the old active one is closed."""


@dataclass(frozen=True)
class SendPresence:
    """Announce the user's current presence on the active connection."""


@dataclass(frozen=True)
class StartTimer:
    timer: Timer
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True)
class Report:
    """A decision worth a log line."""

    text: str


Action = Connect | Disconnect | QueryBackup | Activate | Promote | SendPresence | StartTimer | CancelTimer | Report


@dataclass(frozen=True)
class PolicyConfig:
    home: Endpoint
    dual: bool = True
    activate_retry_s: float = 0.2
    activation_timeout_s: float = 30.0
    max_login_redirects: int = 3
    default_relogin_s: tuple[float, float] = DEFAULT_RELOGIN_S
    failover_retry_s: tuple[float, float] = (0.2, 5.0)  # backoff base and cap of a failover login
    failover_attempts: int = 10


@dataclass
class PolicyState:
    active: Link = Link.DOWN
    inactive: Link = Link.DOWN
    active_endpoint: Endpoint | None = None
    inactive_endpoint: Endpoint | None = None
    activating: bool = False
    info: BackupInfo | None = None
    redirects: int = 0
    failures: int = 0
    relogin_target: Endpoint | None = None
    last_lost: Endpoint | None = None  # the node of the last active connection lost
    failover_target: Endpoint | None = None  # dual mode: the peer a failover login retries (None: not failing over)
    stopped: bool = False
    known: list[Endpoint] = field(default_factory=list)


class DualPolicy:
    """`handle(event) -> actions`; read the state through the properties."""

    def __init__(self, config: PolicyConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._s = PolicyState(known=[config.home])
        # each handler takes its own event class, which a dict's value type cannot say
        self._handlers: dict[type, Callable[[PolicyState, Any], list[Action]]] = {
            Started: self._on_started, Stopped: self._on_stopped, Connected: self._on_connected,
            ConnectFailed: self._on_connect_failed, ConnectionLost: self._on_lost,
            BackupInfoReceived: self._on_info, HoldRefused: self._on_hold_refused,
            ActivationDone: self._on_activated, ActivationRefused: self._on_activation_refused,
            TimerFired: self._on_timer,
        }

    @property
    def state(self) -> PolicyState:
        """A copy of the state: readable, not writable."""
        return dataclasses.replace(self._s, known=list(self._s.known))

    def handle(self, event: Event) -> list[Action]:
        return [] if self._s.stopped else self._handlers[type(event)](self._s, event)

    # -- helpers ----------------------------------------------------------------------
    def relogin_delay(self) -> float:
        """A random delay in the node's [Client Re-Login Lower, Upper] Limits (SPEC §8)."""
        info = self._s.info
        lower, upper = (info.relogin_lower_s, info.relogin_upper_s) if info else self.config.default_relogin_s
        return self._rng.uniform(lower, upper)

    def _remember(self, endpoint: Endpoint | None) -> None:
        if endpoint is not None and endpoint not in self._s.known:
            self._s.known.append(endpoint)

    def _next_target(self, lost: Endpoint | None) -> Endpoint:
        """Round robin over the known nodes, never the one that just failed (if another is known)."""
        order = [e for e in self._s.known if e != lost] or self._s.known
        return order[self._s.failures % len(order)]

    def _relogin(self, s: PolicyState, lost: Endpoint | None, redirect: Endpoint | None = None) -> list[Action]:
        self._remember(redirect)
        s.relogin_target = redirect or self._next_target(lost or s.last_lost)
        # A redirect is a move the server planned (a fallback sends users home): follow it
        # at once. The random delay spreads the logins after a failure nobody planned.
        delay = 0.0 if redirect is not None else self.relogin_delay()
        return [StartTimer(Timer.RELOGIN, delay), Report(f"re-login to {s.relogin_target} in {delay:.2f}s")]

    def _peer(self, lost: Endpoint | None) -> Endpoint | None:
        """The node a dual client fails over to: the backup its node named, else another known node."""
        info = self._s.info
        if info is None or info.endpoint is None:
            return None  # HA off, or not told yet: no peer to fail over to
        if info.endpoint != lost:
            return info.endpoint
        return next((e for e in self._s.known if e != lost), None)

    def _fail_over(self, s: PolicyState, lost: Endpoint | None, redirect: Endpoint | None = None) -> list[Action]:
        """No usable inactive connection after the active one ended (module rules)."""
        lost = lost or s.last_lost
        peer = redirect or self._peer(lost)
        if not self.config.dual or peer is None:
            return self._relogin(s, lost, redirect)
        self._remember(redirect)
        s.relogin_target = s.failover_target = peer
        return [StartTimer(Timer.RELOGIN, 0.0), Report(f"no inactive connection: logging in to {peer} at once")]

    def _failover_retry(self, s: PolicyState) -> list[Action]:
        base, cap = self.config.failover_retry_s
        delay = self._rng.uniform(base / 2, min(cap, base * 2 ** (s.failures - 1)))
        s.relogin_target = s.failover_target
        return [StartTimer(Timer.RELOGIN, delay),
                Report(f"failover login {s.failures} failed: again to {s.relogin_target} in {delay:.2f}s")]

    def _schedule_open(self, s: PolicyState) -> list[Action]:
        if not self.config.dual or s.info is None or s.info.endpoint is None or s.active is not Link.UP:
            return []
        delay = self.relogin_delay()
        return [StartTimer(Timer.OPEN_INACTIVE, delay), Report(f"inactive connection to {s.info.node} in {delay:.2f}s")]

    def _begin_activation(self, s: PolicyState) -> list[Action]:
        s.activating = True
        return [Activate(), StartTimer(Timer.ACTIVATION_TIMEOUT, self.config.activation_timeout_s),
                Report(f"activating the inactive connection to {s.inactive_endpoint}")]

    def _drop_inactive(self, s: PolicyState, close: bool = True) -> list[Action]:
        was = s.inactive
        s.inactive, s.inactive_endpoint, s.activating = Link.DOWN, None, False
        cancels: list[Action] = [CancelTimer(Timer.ACTIVATE_RETRY), CancelTimer(Timer.ACTIVATION_TIMEOUT)]
        return cancels + ([Disconnect(Role.INACTIVE)] if close and was is not Link.DOWN else [])

    # -- handlers -----------------------------------------------------------------------
    def _on_started(self, s: PolicyState, _e: Started) -> list[Action]:
        if s.active is not Link.DOWN:
            return []
        s.active, s.active_endpoint = Link.CONNECTING, self.config.home
        return [Connect(Role.ACTIVE, self.config.home)]

    def _on_stopped(self, s: PolicyState, _e: Stopped) -> list[Action]:
        s.stopped, s.active, s.inactive, s.activating = True, Link.DOWN, Link.DOWN, False
        return [*(CancelTimer(t) for t in Timer), Disconnect(Role.INACTIVE), Disconnect(Role.ACTIVE)]

    def _on_connected(self, s: PolicyState, e: Connected) -> list[Action]:
        if e.role is Role.ACTIVE:
            if s.active is not Link.CONNECTING:
                return []
            s.active, s.redirects, s.failures, s.failover_target = Link.UP, 0, 0, None
            self._remember(s.active_endpoint)
            return [QueryBackup()]
        if s.inactive is not Link.CONNECTING:
            return []
        s.inactive = Link.UP
        return self._begin_activation(s) if s.active is Link.DOWN else []

    def _on_connect_failed(self, s: PolicyState, e: ConnectFailed) -> list[Action]:
        if e.role is Role.INACTIVE:
            if s.inactive is not Link.CONNECTING:
                return []
            s.inactive, s.inactive_endpoint = Link.DOWN, None
            if s.active is Link.UP:
                return self._schedule_open(s)
            return [] if s.active is Link.CONNECTING else self._fail_over(s, None)
        if s.active is not Link.CONNECTING:
            return []
        s.active = Link.DOWN
        if e.redirect is not None and s.redirects < self.config.max_login_redirects:
            s.redirects += 1
            self._remember(e.redirect)
            s.active, s.active_endpoint = Link.CONNECTING, e.redirect
            return [Connect(Role.ACTIVE, e.redirect), Report(f"login redirected to {e.redirect}")]
        s.failures += 1
        if s.failover_target is not None and s.failures <= self.config.failover_attempts:
            return self._failover_retry(s)
        s.failover_target = None
        return self._relogin(s, s.active_endpoint)

    def _on_lost(self, s: PolicyState, e: ConnectionLost) -> list[Action]:
        if e.role is Role.INACTIVE:
            if s.inactive is Link.DOWN:
                return []
            activating = s.activating
            actions = self._drop_inactive(s, close=False)
            if activating or s.active is Link.DOWN:
                return actions + self._fail_over(s, None)
            return actions + self._schedule_open(s)
        if s.active is Link.DOWN:
            return []
        lost, s.active = s.active_endpoint, Link.DOWN
        s.last_lost = lost
        usable = e.redirect is None or e.redirect == s.inactive_endpoint
        actions = [CancelTimer(Timer.OPEN_INACTIVE)]
        if usable and s.inactive is Link.UP:
            return actions + self._begin_activation(s)
        if usable and s.inactive is Link.CONNECTING:
            return [*actions, Report("active connection lost; waiting for the inactive one")]
        return actions + self._drop_inactive(s) + self._fail_over(s, lost, e.redirect)

    def _on_info(self, s: PolicyState, e: BackupInfoReceived) -> list[Action]:
        s.info = e.info
        self._remember(e.info.endpoint)
        if not self.config.dual or e.info.endpoint is None:
            why = "single mode" if not self.config.dual else f"no backup offered ({e.info.reason})"
            return [CancelTimer(Timer.OPEN_INACTIVE), *self._drop_inactive(s), Report(f"no inactive connection: {why}")]
        if s.inactive is Link.DOWN and s.active is Link.UP:
            return self._schedule_open(s)
        return []

    def _on_hold_refused(self, s: PolicyState, _e: HoldRefused) -> list[Action]:
        if s.inactive is not Link.CONNECTING:
            return []
        s.inactive = Link.UP
        return [Report("the backup node serves us already"), *self._on_activated(s, ActivationDone(False))]

    def _on_activated(self, s: PolicyState, e: ActivationDone) -> list[Action]:
        if s.inactive is Link.DOWN:
            return []
        s.active, s.active_endpoint = Link.UP, s.inactive_endpoint
        s.inactive, s.inactive_endpoint, s.activating, s.failures = Link.DOWN, None, False, 0
        actions: list[Action] = [*(CancelTimer(t) for t in Timer), Promote()]
        by = "the server" if e.by_server else "the client"
        actions.append(Report(f"inactive connection to {s.active_endpoint} activated by {by}"))
        return actions + ([] if e.presence_restored else [SendPresence()]) + [QueryBackup()]

    def _on_activation_refused(self, s: PolicyState, e: ActivationRefused) -> list[Action]:
        if not s.activating:
            return []
        if e.retry:
            return [StartTimer(Timer.ACTIVATE_RETRY, self.config.activate_retry_s)]
        return self._drop_inactive(s) + self._fail_over(s, None)

    def _on_timer(self, s: PolicyState, e: TimerFired) -> list[Action]:
        if e.timer is Timer.OPEN_INACTIVE:
            if s.active is not Link.UP or s.inactive is not Link.DOWN or s.info is None or s.info.endpoint is None:
                return []
            s.inactive, s.inactive_endpoint = Link.CONNECTING, s.info.endpoint
            return [Connect(Role.INACTIVE, s.info.endpoint)]
        if e.timer is Timer.RELOGIN:
            if s.active is not Link.DOWN or s.inactive is Link.UP or s.relogin_target is None:
                return []
            s.active, s.active_endpoint = Link.CONNECTING, s.relogin_target
            return [Connect(Role.ACTIVE, s.relogin_target)]
        if e.timer is Timer.ACTIVATE_RETRY:
            return [Activate()] if s.activating and s.inactive is Link.UP else []
        if not s.activating:
            return []
        return [Report("activation timed out"), *self._drop_inactive(s), *self._fail_over(s, None)]
