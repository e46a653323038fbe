"""Abuse limits of the client port: a per-connection token bucket and a failed-login throttle.

Rules of this module:
- Pure bookkeeping; the caller passes `now` (monotonic seconds), so tests need no clock.
- `TokenBucket`: bytes refill at `rate` per second up to `burst`; a read that finds the
  bucket empty is over the limit (the adapter ends the stream with `policy-violation`).
- `AuthThrottle`: failures are remembered per key (the peer IP and the username) for
  `window_s`. From the second failure on, the next answer is delayed by
  `base_s * 2**(failures-2)`, capped at `max_s`; the larger of the IP and user delays
  applies. A successful login clears the user's record (not the IP's).
"""

from __future__ import annotations

from collections import deque


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, amount: float, now: float) -> bool:
        """Spend `amount`; False when the bucket cannot cover it (nothing is spent)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


class AuthThrottle:
    MAX_KEYS = 100_000  # bound memory under a spray of usernames

    def __init__(self, base_s: float, max_s: float, window_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            if len(self._failures) >= self.MAX_KEYS:
                self._failures.pop(next(iter(self._failures)))
            times = self._failures[key] = deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def _delay(self, count: int) -> float:
        if count < 2:
            return 0.0
        return min(self.max_s, self.base_s * 2 ** (count - 2))

    def failure(self, keys: list[str], now: float) -> float:
        """Record a failure for every key; return the delay before answering."""
        delay = 0.0
        for key in keys:
            times = self._recent(key, now)
            times.append(now)
            delay = max(delay, self._delay(len(times)))
        return delay

    def success(self, key: str) -> None:
        self._failures.pop(key, None)
