"""Ordered, concurrent execution of work received from peer nodes.

Rules of this module:
- Work items with the same key run one after the other, in arrival order; items of
  different keys run concurrently. Keys are a recipient account (routed stanzas) or
  a relayed session, so delivery is ordered per sender and receiver (the link is
  ordered per peer) while one slow recipient does not hold up the others.
- A failing item is logged and counted; the next one runs. Nothing here raises into
  the link's frame callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[None]]
# Queued items: (work, done); `done` (tracked items only) is set once the work has run.


class Inbox:
    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[Work]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0

    def submit(self, key: Hashable, work: Work, *, tracked: bool = False) -> asyncio.Future[None] | None:
        """Queue `work` behind the earlier items of `key`; with `tracked`, return a future
        done when it has run (failed or not), for the link to acknowledge it then."""
        done = asyncio.get_running_loop().create_future() if tracked else None
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((work, done))
            return done
        self._queues[key] = deque([(work, done)])
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return done

    async def _run(self, key: Hashable) -> None:
        queue = self._queues[key]
        try:
            while queue:
                work, done = queue[0]
                try:
                    await work()
                except Exception:  # one bad item must not stop the others
                    self.failures += 1
                    log.exception("cluster inbox: work for %s failed", key)
                queue.popleft()
                if done is not None and not done.done():
                    done.set_result(None)
        finally:
            for _work, done in self._queues.pop(key, ()):
                if done is not None and not done.done():
                    done.cancel()  # closed before it ran: never acknowledged

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every submitted item has run."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
