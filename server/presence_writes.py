"""Group commit of the shared presence records (RFC 6121 §4.3.2; SPEC §8 takeover).

Why: each presence broadcast was one write transaction (read the row, update it,
commit), so at a few hundred users the writes queued on SQLite's single writer and the
connection pool ran dry. Writes now share transactions.

Rules of this module:
- `write(key, value)` returns once a transaction containing that write (or a later
  write of the same key) committed, so callers keep "persist, then send": a
  presence is in the shared records before anyone is told about it.
- One flusher task at a time: it takes everything queued, writes it in one
  transaction through `flush`, wakes the writers, and repeats while more arrived in
  the meantime. Later writes of a key replace earlier queued ones (only the last
  presence of a resource matters), and batches commit in order, so a delete queued
  after an upsert of the same key is never overtaken.
- `flush(batch)` returns the keys it refused with their exception (an unknown user);
  those writers get that exception. If the whole transaction fails, every writer of
  the batch gets the error (`DatabaseUnavailable`), as when each wrote alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)

Batch = dict[Hashable, Any]
Flush = Callable[[Batch], Awaitable[dict[Hashable, BaseException]]]


class GroupCommit:
    def __init__(self, flush: Flush) -> None:
        self._flush = flush
        self._queued: Batch = {}
        self._waiters: dict[Hashable, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written (for tests and diagnostics)

    async def write(self, key: Hashable, value: Any) -> None:
        self._queued[key] = value
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await waiter

    async def _run(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, {}
            waiters, self._waiters = self._waiters, {}
            try:
                refused = await self._flush(batch)
            except asyncio.CancelledError:  # node shutdown: nobody waits forever
                for futures in waiters.values():
                    _cancel(futures)
                raise
            except Exception as exc:  # noqa: BLE001 - not swallowed: handed to each writer, as if it had written alone
                refused = dict.fromkeys(batch, exc)
            self.batches += 1
            for key, futures in waiters.items():
                _settle(futures, refused.get(key))


def _cancel(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.cancel()


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue  # the writer was cancelled (its session ended); the write still stands
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
