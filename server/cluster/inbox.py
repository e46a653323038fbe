"""Ordered, concurrent execution of work received from peer nodes.

Rules of this module:
- Work items with the same key run one after the other, in arrival order; items of
  different keys run concurrently. Keys are a recipient account (routed stanzas) or
  a relayed session, so delivery is ordered per sender and receiver (the link is
  ordered per peer) while one slow recipient does not hold up the others.
- A failing item is logged and counted; the next one runs. Nothing here raises into
  the link's frame callback.
- An item whose key has nothing queued starts at once, inside `submit`: most
  deliveries (a message to an online user) finish without suspending, and then cost
  no task, no future and no turn of the loop (measured: cross-node latency and CPU).
  Only if it suspends does a task carry it on from there (`_Resume`), and later items
  of its key queue behind it. An item that finished at once returns None (a tracked
  one: the link then acknowledges it as processed); one that waits returns its future
  (tracked) or `QUEUED`, so the link knows that work is pending (endpoint.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[None]]
QUEUED = "queued"  # `submit` of an untracked item that waits (queued or suspended)
# Queued items: (work, done); `done` (tracked items only) is set once the work has run.


class Inbox:
    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[Work]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0

    def submit(self, key: Hashable, work: Work, *, tracked: bool = False) -> asyncio.Future[None] | str | None:
        """Run or queue `work` behind the earlier items of `key`; with `tracked`, return a
        future done when it has run (failed or not), for the link to acknowledge it
        then, or None if it already has (untracked: `QUEUED` or None)."""
        queue = self._queues.get(key)
        if queue is not None:
            done = asyncio.get_running_loop().create_future() if tracked else None
            queue.append((work, done))
            return done if tracked else QUEUED
        coro = work()
        try:
            yielded = coro.send(None)
        except StopIteration:
            return None
        except Exception:
            self._failed(key)
            return None
        done = asyncio.get_running_loop().create_future() if tracked else None
        self._queues[key] = deque([(_Resume(coro, yielded).run, done)])
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return done if tracked else QUEUED

    def _failed(self, key: Hashable) -> None:
        self.failures += 1
        log.exception("cluster inbox: work for %s failed", key)

    async def _run(self, key: Hashable) -> None:
        queue = self._queues[key]
        try:
            while queue:
                work, done = queue[0]
                try:
                    await work()
                except Exception:  # one bad item must not stop the others
                    self._failed(key)
                queue.popleft()
                if done is not None and not done.done():
                    done.set_result(None)
        finally:
            for _work, done in self._queues.pop(key, ()):
                if done is not None and not done.done():
                    done.cancel()  # closed before it ran: never acknowledged

    def idle(self, key: Hashable) -> bool:
        """Nothing of `key` is queued or running: an item submitted now starts at once."""
        return key not in self._queues

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


class _Resume:
    """A coroutine started in `submit` that suspended on `yielded`, carried on by a
    task: each value the coroutine yields (the future it awaits) goes up to the task
    as its own, and what the task sends or throws back goes down to the coroutine."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro, yielded) -> None:
        self._coro, self._yielded = coro, yielded

    async def run(self) -> None:
        await self

    def __await__(self):
        value = self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                self._coro.close()
                raise
            except BaseException as exc:  # cancellation and the like: into the coroutine
                try:
                    value = self._coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = self._coro.send(sent)
                except StopIteration:
                    return
