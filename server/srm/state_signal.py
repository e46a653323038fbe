"""A signal for "the SRM machine's state changed", for logins that wait for it.

Rules of this module:
- `notify()` is synchronous (the runner calls it right after the machine handled an
  event); every waiter wakes and checks its own condition again.
- `wait_until(condition, timeout_s)` returns once `condition()` holds or the time is
  up, whichever comes first; it never raises on timeout (admission decides then with
  whatever the state is).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StateSignal:
    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()  # the next change wakes the next round of waiters

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return
