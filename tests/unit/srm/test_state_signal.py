"""Logins waiting for the SRM state: woken by a change, or let go at the deadline."""

from __future__ import annotations

import asyncio

from presence_ha.server.srm.state_signal import StateSignal


def test_a_change_wakes_a_waiter_whose_condition_now_holds() -> None:
    async def scenario() -> list[str]:
        signal, state, seen = StateSignal(), {"ready": False}, []

        async def login() -> None:
            await signal.wait_until(lambda: state["ready"], timeout_s=60)
            seen.append("admitted")

        task = asyncio.create_task(login())
        await asyncio.sleep(0)
        signal.notify()  # a change that does not settle it: the waiter keeps waiting
        await asyncio.sleep(0)
        assert seen == []
        state["ready"] = True
        signal.notify()
        await task
        return seen

    assert asyncio.run(scenario()) == ["admitted"]


def test_no_time_left_returns_at_once() -> None:
    async def scenario() -> None:
        await StateSignal().wait_until(lambda: False, timeout_s=0)

    asyncio.run(scenario())
