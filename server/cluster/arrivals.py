"""Users the SRM moved here whose sessions are not active yet (SPEC §8 takeover).

Rules of this module:
- Between a committed move of users to this node and their sessions' activation, a
  stanza for one of them waits (`pending`, read by `ClusterRoute`) instead of going to
  offline storage a moment before the session turns active.
- `expect(wait_s, give_up)` opens that window (the SRM moved users here); `settle()`
  closes it (they are active, or the wait is over) and says whether it was open;
  `cancel()` closes it without settling (users left this node instead).
- Built before the router and the cluster service, which both read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Arrivals:
    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None  # users arrived here, not yet active...
        self._future: asyncio.Future[None] | None = None  # ...and what stanzas for them wait on

    def pending(self) -> asyncio.Future[None] | None:
        """What a stanza for an arriving user waits on (done, or None: nothing to wait for)."""
        return self._future

    def expect(self, wait_s: float, give_up: Callable[[], None]) -> None:
        """Users arrived: stanzas for them wait until `settle`, `give_up` runs after `wait_s`."""
        self.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(wait_s, give_up)
        if self._future is None or self._future.done():
            self._future = loop.create_future()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def settle(self) -> bool:
        """The arrived users are active (or the wait is over): release what waits.
        False if no arrival was expected."""
        if self._timer is None:
            return False
        self.cancel()
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        return True
