"""How late the event loop runs: the sign of a saturated node.

Rules of this module:
- `lateness(period_s)` yields, every `period_s`, how late the loop ran that sleep
  (seconds, never negative). The client port samples it all the time (login gate,
  `event_loop_lag_seconds`); the SRM samples it during each database check.
- `LoopLag.watching()` keeps the worst lateness seen while a block of code runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

TICK_S = 0.1  # `LoopLag`'s sampling period


async def lateness(period_s: float) -> AsyncIterator[float]:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        yield max(0.0, loop.time() - due)


class LoopLag:
    """The worst lateness of the event loop while `watching()`."""

    def __init__(self) -> None:
        self.worst_s = 0.0

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[LoopLag]:
        task = asyncio.get_running_loop().create_task(self._sample())
        try:
            yield self
        finally:
            task.cancel()

    async def _sample(self) -> None:
        async for late in lateness(TICK_S):
            self.worst_s = max(self.worst_s, late)
