"""The node's critical services (SPEC §4), each a real component that can stop and fail.

Rules of this module:
- One `Service` per critical service of the source, mapped to a component of this node:
  `xcp-router` (the client listener and every client stream), `presence-engine`
  (presence and IM processing), `sync-agent` (watches the database assignment and ends
  sessions of users this node no longer serves), `client-profile-agent` (the per-node
  client profile: re-login limits and backup node), `xcp-auth` (SASL logins; monitored
  only when the parameter `monitor_auth_service` is true) and `sip-proxy` (listed as
  "not applicable": this product speaks XMPP only).
- A stopped service has one cause: `ADMIN` (the admin stopped it), `FAILED` (it failed
  on its own) or `SRM` (the SRM stopped every service: failover, Idle, ...). Only
  ADMIN and FAILED of a monitored, applicable service are *faults*.
- Health goes to the SRM as events through the `HealthSink` given at construction
  (the SRM's inbox): `CriticalServiceDown(name)` when the first fault appears,
  `CriticalServicesRestored()` when the last one clears.
  The Critical Service Delay is the SRM machine's timer, not a timer here.
- A component that can fail on its own is told whom to tell when it is started:
  `start(failed)`; it calls `failed(detail)` once it crashed.
- `stop_all`/`start_all` execute the SRM's StopCriticalServices/StartCriticalServices
  (idempotent); `start_all` returns its result event instead of reporting it.
- Admin errors: `UnknownService(name)`, `ServiceNotApplicable(name)`.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server.sessions import Session
from presence_ha.server.srm.events import (
    CriticalServiceDown,
    CriticalServicesRestored,
    CriticalServiceStartFailed,
    Event,
)
from presence_ha.server.xmpp.errors import StreamError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An admin request about a service cannot be carried out."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class UnknownService(ServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(name, f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")


class ServiceNotApplicable(ServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(name, f"service {name!r} is not applicable to this XMPP-only product (SPEC §4)")


# Longest wait for clients to close after a failover's redirect (their streams are already closed here).
HANDOVER_CLOSE_S = 0.25


class StopCause(enum.Enum):
    ADMIN = "stopped by the admin"
    FAILED = "failed"
    SRM = "stopped by the SRM"


FailureReport = Callable[[str], None]  # a running component failed on its own: the detail


class Component(Protocol):
    """What a service runs. `start` raises on failure; `stop` never raises. A component
    that fails later calls `failed(detail)`, given to the `start` that started it."""

    async def start(self, failed: FailureReport) -> None: ...
    async def stop(self, cause: StopCause) -> None: ...


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    display_name: str
    running: bool
    applicable: bool
    monitored: bool
    cause: str = ""  # why it is down ("" while running)


SERVICE_NAMES = ("xcp-router", "presence-engine", "sync-agent", "client-profile-agent", "xcp-auth", "sip-proxy")
DISPLAY_NAMES = {
    "xcp-router": "Connection Manager and Router (XCP Router)",
    "presence-engine": "Presence Engine",
    "sync-agent": "Sync Agent",
    "client-profile-agent": "Client Profile Agent",
    "xcp-auth": "Authentication Service (XCP Authentication Service)",
    "sip-proxy": "SIP Proxy",
}
START_ORDER = ("client-profile-agent", "sync-agent", "xcp-auth", "presence-engine", "xcp-router")


class Switch:
    """A component that is only a gate other code consults (presence engine, SASL)."""

    def __init__(self) -> None:
        self.on = True

    async def start(self, failed: FailureReport) -> None:
        self.on = True

    async def stop(self, cause: StopCause) -> None:
        self.on = False


class PeriodicTask:
    """A component running `work()` every `interval_s()` seconds; a crash is a failure."""

    def __init__(self, name: str, work: Callable[[], Awaitable[None]], interval_s: Callable[[], float]) -> None:
        self.name, self._work, self._interval_s = name, work, interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self, failed: FailureReport) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(failed), name=self.name)

    async def stop(self, cause: StopCause) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self, failed: FailureReport) -> None:
        try:
            while True:
                await self._work()
                await asyncio.sleep(self._interval_s())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the component failed on its own (SPEC §4)
            log.exception("%s failed", self.name)
            failed(repr(exc))


class Service:
    def __init__(self, name: str, component: Component | None, monitored: bool = True) -> None:
        self.name, self.component = name, component
        self.applicable = component is not None
        self.monitored = monitored and self.applicable
        # Not started yet: held down by the SRM (not a fault) until the node starts it.
        self.cause: StopCause | None = StopCause.SRM
        self.error = ""  # the last start failure, for the node's start error

    @property
    def running(self) -> bool:
        return self.applicable and self.cause is None

    @property
    def faulty(self) -> bool:
        return self.monitored and self.cause in (StopCause.ADMIN, StopCause.FAILED)

    def status(self) -> ServiceStatus:
        cause = "not applicable" if not self.applicable else (self.cause.value if self.cause else "")
        return ServiceStatus(self.name, DISPLAY_NAMES[self.name], self.running, self.applicable, self.monitored, cause)


class HealthSink(Protocol):
    """Where the services report their health: the SRM's inbox."""

    def post(self, event: Event) -> None: ...


class CriticalServices:
    """The node's critical services: admin control, SRM control, health reports."""

    def __init__(self, components: dict[str, Component | None], health: HealthSink) -> None:
        unknown = set(components) - set(SERVICE_NAMES)
        if unknown:
            raise ValueError(f"not critical services: {sorted(unknown)}")
        self._services = {name: Service(name, components.get(name)) for name in SERVICE_NAMES}
        self._lock = asyncio.Lock()
        self._faulty = False
        self._health = health

    # --- admin API (the source's Control Center - Network Services) -----------------

    def list(self) -> list[ServiceStatus]:
        return [service.status() for service in self._services.values()]

    def get(self, name: str) -> Service:
        try:
            return self._services[name]
        except KeyError:
            raise UnknownService(name) from None

    async def stop(self, name: str) -> None:
        """The admin stops `name`; a monitored service becomes a fault."""
        service = self._applicable(name)
        async with self._lock:
            if service.cause in (None, StopCause.SRM):
                await self._stop_one(service, StopCause.ADMIN)
            self._report()

    async def start(self, name: str) -> None:
        """The admin starts `name` (also while the SRM holds the others stopped)."""
        service = self._applicable(name)
        async with self._lock:
            if not service.running:
                await self._start_one(service)
            self._report()

    def set_monitored(self, name: str, monitored: bool) -> None:
        """`monitor_auth_service` (SPEC §5) decides whether xcp-auth counts."""
        service = self.get(name)
        service.monitored = monitored and service.applicable
        self._report()

    # --- SRM API -----------------------------------------------------------------------

    async def stop_all(self) -> None:
        """StopCriticalServices: stop every running service, the router first (no new
        client arrives while the rest stops)."""
        async with self._lock:
            for name in reversed(START_ORDER):
                service = self._services[name]
                if service.running:
                    await self._stop_one(service, StopCause.SRM)

    async def start_all(self) -> Event:
        """StartCriticalServices: start every applicable service; the result event."""
        async with self._lock:
            failed = ""
            for name in START_ORDER:
                service = self._services[name]
                if not service.running and not await self._start_one(service):
                    failed = failed or name
            self._faulty = any(s.faulty for s in self._services.values())
            return CriticalServiceStartFailed(failed) if failed else CriticalServicesRestored()

    @property
    def faults(self) -> builtins.list[str]:  # `list` here is the method above
        return [s.name for s in self._services.values() if s.faulty]

    # --- internals ---------------------------------------------------------------------

    def _applicable(self, name: str) -> Service:
        service = self.get(name)
        if not service.applicable:
            raise ServiceNotApplicable(name)
        return service

    async def _stop_one(self, service: Service, cause: StopCause) -> None:
        assert service.component is not None
        await service.component.stop(cause)
        service.cause = cause
        log.info("service %s %s", service.name, cause.value)

    async def _start_one(self, service: Service) -> bool:
        assert service.component is not None
        try:
            await service.component.start(lambda detail: self._crashed(service, detail))
        except Exception as exc:  # a start failure is reported to the SRM, not raised
            log.exception("service %s failed to start", service.name)
            service.cause, service.error = StopCause.FAILED, str(exc)
            await service.component.stop(StopCause.FAILED)
            return False
        service.cause = None
        log.info("service %s running", service.name)
        return True

    def _crashed(self, service: Service, detail: str) -> None:
        if service.cause is None:
            service.cause = StopCause.FAILED
            log.warning("service %s failed on its own: %s", service.name, detail)
            self._report()

    def _report(self) -> None:
        faults = self.faults
        if faults and not self._faulty:
            self._health.post(CriticalServiceDown(faults[0]))
        elif not faults and self._faulty:
            self._health.post(CriticalServicesRestored())
        self._faulty = bool(faults)


# --- the components of this node -------------------------------------------------------


class ClientPortView(Protocol):
    """What the services need of `server.net.clients.ClientPort`."""

    @property
    def listening(self) -> bool: ...

    async def start(self, host: str, port: int) -> None: ...
    async def stop_listening(self, error: StreamError | None, timeout_s: float, *, handover: bool = False) -> None: ...
    async def close_sessions(self, chosen: Callable[[Session], bool], error_for: Callable[[str], StreamError | None],
                             timeout_s: float,
                             *, handover: bool = False) -> int: ...


class RouterComponent:
    """xcp-router: the client listener and every client stream of this node."""

    def __init__(self, port: ClientPortView, host: str, number: int, farewell: Callable[[StopCause], StreamError],
                 timeout_s: float) -> None:
        self._port, self._host, self._number = port, host, number
        self._farewell, self._timeout_s = farewell, timeout_s

    async def start(self, failed: FailureReport) -> None:
        if not self._port.listening:
            await self._port.start(self._host, self._number)

    async def stop(self, cause: StopCause) -> None:
        error = self._farewell(cause)
        # Stopped by the SRM with a redirect to the peer: this node fails over and its
        # users move on to the peer, presence and all (SPEC §8).
        handover = cause is StopCause.SRM and error.other_host is not None
        # A handover waits only briefly for clients to close their side: the peer takes
        # the users over once this stop is done (the stream error is already sent).
        timeout_s = min(self._timeout_s, HANDOVER_CLOSE_S) if handover else self._timeout_s
        await self._port.stop_listening(error, timeout_s, handover=handover)


@dataclass(frozen=True)
class ClientProfile:
    """What the Client Profile Agent serves: re-login limits and the backup node (SPEC §8)."""

    relogin_lower_s: int
    relogin_upper_s: int
    backup_node: str | None
    ha_enabled: bool


class ClientProfileAgent(PeriodicTask):
    """client-profile-agent: keeps this node's client profile fresh from the database."""

    def __init__(self, load: Callable[[], Awaitable[ClientProfile]], interval_s: Callable[[], float]) -> None:
        super().__init__("client-profile-agent", self._refresh, interval_s)
        self._load = load
        self.profile: ClientProfile | None = None

    async def _refresh(self) -> None:
        try:
            self.profile = await self._load()
        except DatabaseUnavailable as exc:  # the SRM reports Database Failure; keep the last profile
            log.warning("client profile not refreshed: %s", exc)

    async def stop(self, cause: StopCause) -> None:
        await super().stop(cause)
        self.profile = None  # a stopped agent serves no profile


class SyncAgent(PeriodicTask):
    """sync-agent: the database names each user's active node; sessions follow it.

    Every interval it ends the active sessions of users this node no longer serves
    (moved by a failover, fallback or the admin) with see-other-host to their node.
    """

    def __init__(self, enforce: Callable[[], Awaitable[int]], interval_s: Callable[[], float]) -> None:
        super().__init__("sync-agent", self._sync, interval_s)
        self._enforce = enforce

    async def _sync(self) -> None:
        try:
            ended = await self._enforce()
        except DatabaseUnavailable as exc:  # the SRM reports Database Failure
            log.warning("assignment not checked: %s", exc)
            return
        if ended:
            log.info("sync-agent ended %d session(s) of users served elsewhere", ended)
