"""The SRM's inbox: the one queue of events its worker handles, one at a time.

Rules of this module:
- Built before the SRM and the components that report to it (the critical
  services' health, the peer link), so each gets the inbox at construction and no
  one is given a callback afterwards.
- `post(event)` is for reporters: once the node stops (`close()`), what they report
  changes nothing here (the peer already takes over), so it is dropped.
- `put(item)` is the runner's own way in (timers, results of its actions, admin
  requests with a reply), never dropped: the runner decides what an item is for.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from presence_ha.server.srm.actions import Action
from presence_ha.server.srm.events import Event


@dataclass
class Item:
    event: Event | None  # None: restart the machine
    reply: asyncio.Future[list[Action]] | None = None  # set to the actions once they ran
    timer_gen: int | None = None  # a timer's generation when it was started
    machine_gen: int | None = None  # results of an action: only for the machine that asked
    at: float = field(default_factory=time.monotonic)  # when it was queued


class SrmInbox:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._closed = False

    def post(self, event: Event) -> None:
        """A reporter's event; dropped once the inbox is closed."""
        if not self._closed:
            self._queue.put_nowait(Item(event))

    def put(self, item: Item) -> None:
        self._queue.put_nowait(item)

    async def get(self) -> Item:
        return await self._queue.get()

    def close(self) -> None:
        self._closed = True
