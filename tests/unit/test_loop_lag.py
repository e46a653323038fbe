"""`server.loop_lag.LoopLag`: how late the event loop ran while a database check was in
flight (a slow check during which the node's own loop ran late is not a Database Failure)."""

from __future__ import annotations

import asyncio
import time

from presence_ha.server.loop_lag import TICK_S as LAG_TICK_S
from presence_ha.server.loop_lag import LoopLag


async def test_an_idle_loop_is_not_late():
    lag = LoopLag()
    async with lag.watching():
        await asyncio.sleep(3 * LAG_TICK_S)
    assert lag.worst_s < LAG_TICK_S


async def test_a_busy_loop_is_seen_late():
    lag = LoopLag()
    async with lag.watching():
        await asyncio.sleep(LAG_TICK_S / 2)
        time.sleep(0.4)  # noqa: ASYNC251 -- the loop's thread is busy: its timers fire late
        await asyncio.sleep(2 * LAG_TICK_S)
    assert lag.worst_s >= 0.25


async def test_the_ticker_ends_with_the_watch():
    lag = LoopLag()
    before = len(asyncio.all_tasks())
    async with lag.watching():
        assert len(asyncio.all_tasks()) == before + 1
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
