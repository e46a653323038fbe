"""The critical services report their health to the sink they were built with.

Rules under test: the first fault is `CriticalServiceDown(name)`, the last one
cleared `CriticalServicesRestored()`; a component that fails on its own after its
start reports through the `failed` it was started with; an SRM stop is no fault.
"""

from __future__ import annotations

import asyncio

from presence_ha.server.services import (
    Component,
    CriticalServices,
    FailureReport,
    PeriodicTask,
    StopCause,
    Switch,
)
from presence_ha.server.srm.events import CriticalServiceDown, CriticalServicesRestored, Event


def switches(**others: Component) -> dict[str, Component | None]:
    """Every critical service of START_ORDER as a Switch, but for `others`."""
    names = ("xcp-router", "presence-engine", "sync-agent", "client-profile-agent", "xcp-auth")
    return {name: others.get(name.replace("-", "_"), Switch()) for name in names}


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def post(self, event: Event) -> None:
        self.events.append(event)


class Crashing:
    """A component that fails once told to (as a PeriodicTask whose work raises)."""

    def __init__(self) -> None:
        self.failed: FailureReport | None = None

    async def start(self, failed: FailureReport) -> None:
        self.failed = failed

    async def stop(self, cause: StopCause) -> None:
        pass


def test_admin_stop_and_start_report_down_then_restored() -> None:
    async def scenario() -> list[Event]:
        sink = Sink()
        services = CriticalServices(switches(), sink)
        await services.start_all()
        await services.stop_all()  # the SRM stops them: no fault
        await services.start_all()
        await services.stop("presence-engine")
        await services.stop("xcp-router")  # a second fault: no second report
        await services.start("presence-engine")
        await services.start("xcp-router")
        return sink.events

    assert asyncio.run(scenario()) == [CriticalServiceDown("presence-engine"), CriticalServicesRestored()]


def test_a_component_failing_on_its_own_reports_through_its_start() -> None:
    async def scenario() -> tuple[list[Event], list[str]]:
        sink, crashing = Sink(), Crashing()
        services = CriticalServices(switches(sync_agent=crashing), sink)
        await services.start_all()
        assert crashing.failed is not None
        crashing.failed("boom")
        return sink.events, services.faults

    assert asyncio.run(scenario()) == ([CriticalServiceDown("sync-agent")], ["sync-agent"])


def test_a_periodic_task_whose_work_raises_reports_its_failure() -> None:
    async def scenario() -> list[str]:
        reports: list[str] = []

        async def work() -> None:
            raise RuntimeError("boom")

        task = PeriodicTask("sync-agent", work, lambda: 60.0)
        await task.start(reports.append)
        for _ in range(3):
            await asyncio.sleep(0)
        await task.stop(StopCause.SRM)
        return reports

    assert asyncio.run(scenario()) == ["RuntimeError('boom')"]
