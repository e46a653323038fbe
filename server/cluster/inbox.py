"""Ordered, concurrent execution of work received from peer nodes.

Rules of this module:
- Work items with the same key run one after the other, in arrival order; items of
  different keys run concurrently. Keys (`InboxKey`) are a recipient account
  (`RecipientKey`, routed stanzas), a relayed session on the node hosting it
  (`UpstreamKey`) or on the node holding its client (`DownstreamKey`), or a peer whose
  relayed sessions end (`PeerLostKey`), so delivery is ordered per sender and
  receiver (the link is ordered per peer) while one slow recipient does not hold up
  the others.
- A failing item is logged and counted; the next one runs. Nothing here raises into
  the link's frame callback.
- Every item runs in a task (its key's), never inside the caller: the link's frame
  callbacks run outside any task, and work that awaits may need its own (asyncio's
  `timeout`, which asyncpg uses, cancels the task it was entered in; run inside the
  link's reader, as items once were, a slow query would have cancelled the link).
  The common case, a message or a presence broadcast for an online user, does not
  come here: it is delivered at once (`routing.deliver_routed_now`).
- `submit` returns the item's future (tracked: the link acknowledges the frame once
  it is done) or `QUEUED`, so the link knows that work is pending (endpoint.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

log = logging.getLogger(__name__)

# A routed stanza's recipient account (its bare JID). Made per routed frame, so the plain
# string itself (no object to build, no call: measured on the triage's path); the
# session keys below are dataclasses, so no key of another sort can ever equal one.
RecipientKey: TypeAlias = str


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    """Work for the session `sid` this node hosts for a client connected to `peer`."""

    peer: str
    sid: str


@dataclass(frozen=True, slots=True)
class DownstreamKey:
    """Work for the relayed client `sid` connected here."""

    sid: str


@dataclass(frozen=True, slots=True)
class PeerLostKey:
    """Ending the sessions relayed with `peer` (it restarted or stayed unreachable)."""

    peer: str


InboxKey = RecipientKey | UpstreamKey | DownstreamKey | PeerLostKey

Work = Callable[[], Awaitable[None]]
QUEUED = "queued"  # what `submit` of an untracked item returns
# Queued items: (work, done); `done` (tracked items only) is set once the work has run.
Item = tuple[Work, "asyncio.Future[None] | None"]


class Inbox:
    def __init__(self) -> None:
        self._queues: dict[InboxKey, deque[Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0

    def submit(self, key: InboxKey, work: Work, *, tracked: bool = False) -> asyncio.Future[None] | str:
        """Queue `work` behind the earlier items of `key`; with `tracked`, return a future
        done when it has run (failed or not), for the link to acknowledge it then
        (untracked: `QUEUED`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] | None = loop.create_future() if tracked else None
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((work, done))
        else:
            self._queues[key] = deque([(work, done)])
            task = loop.create_task(self._run(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return done if done is not None else QUEUED

    async def _run(self, key: InboxKey) -> None:
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

    def idle(self, key: InboxKey) -> bool:
        """Nothing of `key` is queued or running: an item submitted now starts at once."""
        return key not in self._queues

    @property
    def empty(self) -> bool:
        """Nothing is queued or running: any item submitted now starts at once."""
        return not self._queues

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

