"""Limits of the client port: a per-connection token bucket, a failed-login throttle and
the login gate.

Rules of this module:
- Pure bookkeeping; the caller passes `now` (monotonic seconds), so tests need no clock.
- `TokenBucket`: bytes refill at `rate` per second up to `burst`; a read that finds the
  bucket empty is over the limit (the adapter ends the stream with `policy-violation`).
- `AuthThrottle`: failures are remembered per key (the peer IP and the username) for
  `window_s`. From the second failure on, the next answer is delayed by
  `base_s * 2**(failures-2)`, capped at `max_s`; the larger of the IP and user delays
  applies. A successful login clears the user's record (not the IP's).
- `LoginGate`: bounds the connections negotiating at once (from accept until their
  session is bound or resumed, or the connection ends), so a login storm (10,000 users
  re-logging in after a failover) is admitted at the node's sustained rate and the
  admitted logins finish long before the auth timeout. The bound is what the node
  completes in `budget_s` at its measured rate (logins bound per second over the last
  `WINDOW_S`), and never less than `floor`: a node that keeps up never sheds, one that
  falls behind sheds the excess at once with a retryable `resource-constraint` stream
  error, answering the stream header before TLS, so a shed attempt costs little
  (`c2s`). It is a count, not a queue: a shed client retries after its own backoff.
  A node is saturated when its recent logins were slow, or when its event loop runs
  late (`note_lag`): a loop too busy to accept connections in time makes clients wait
  before their login is even measured (in the kernel's accept queue), so the logins
  it does measure look quick while clients time out.
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


class LoginGate:
    """How many connections may negotiate (TLS, SASL, bind) at once.

    Normally what the node completed recently, over `budget_s`, and never fewer than
    `floor` (a cold or idle node has no rate yet: a burst must not be shed). When the
    logins of the last `WINDOW_S` took longer than `target_s` (half of them), the node
    is saturated - a re-login storm after a failover - and the floor no longer
    applies: it admits what it completes in `target_s` (at least `MIN_LIMIT`) and
    sheds the rest with a retryable error. Admitting more would not finish more; it
    would only make every login slower, until clients time out and retry work the
    node already did."""

    WINDOW_S = 5.0  # the rate and the latency are measured over this much recent time
    MIN_LIMIT = 50  # a saturated node still admits this many at once
    MIN_SAMPLES = 10  # completed logins needed to call the node saturated
    LOGIN_STEPS = 10  # round trips of a login (header, STARTTLS, TLS, SASL, bind...): each waits for the loop
    MIN_LAG_SAMPLES = 2  # loop-lag samples needed to call the node saturated

    def __init__(self, floor: int, budget_s: float, target_s: float | None = None) -> None:
        self.floor = floor
        self.budget_s = budget_s
        self.target_s = target_s if target_s is not None else budget_s / 3
        self.lag_limit_s = self.target_s / self.LOGIN_STEPS  # a loop this late makes logins miss the target
        self.in_progress = 0
        self.shed = 0  # logins refused since start
        self._completed: deque[tuple[float, float | None]] = deque()  # (when, how long) of recent logins
        self._lags: deque[tuple[float, float]] = deque()  # (when, how late) of recent loop-lag samples

    def note_lag(self, now: float, lag_s: float) -> None:
        """The event loop ran a timer `lag_s` late (a sample every fraction of a second)."""
        self._lags.append((now, lag_s))

    def limit(self, now: float) -> int:
        """How many logins may negotiate at once now."""
        while self._completed and now - self._completed[0][0] > self.WINDOW_S:
            self._completed.popleft()
        while self._lags and now - self._lags[0][0] > self.WINDOW_S:
            self._lags.popleft()
        rate = len(self._completed) / self.WINDOW_S
        if self.saturated():
            return max(self.MIN_LIMIT, int(rate * self.target_s))
        return max(self.floor, int(rate * self.budget_s))

    def saturated(self) -> bool:
        """Half the recent logins took longer than `target_s`, or half the recent loop-lag
        samples were `lag_limit_s` or later (call `limit` first). Half, not one: a single
        slow login or a pause of the loop (a full collection) sheds nobody."""
        timed = [took for _, took in self._completed if took is not None]
        if len(timed) >= self.MIN_SAMPLES and 2 * sum(1 for took in timed if took > self.target_s) >= len(timed):
            return True
        lags = self._lags
        return (len(lags) >= self.MIN_LAG_SAMPLES
                and 2 * sum(1 for _, lag in lags if lag >= self.lag_limit_s) >= len(lags))

    def enter(self, now: float) -> bool:
        """Admit one more negotiating connection; False (and counted as shed) when full."""
        if self.in_progress >= self.limit(now):
            self.shed += 1
            return False
        self.in_progress += 1
        return True

    def leave(self, now: float, completed: bool, started: float | None = None) -> None:
        """A negotiating connection is done: `completed` if it bound (or resumed) a
        session; `started` when it entered (its login time is measured)."""
        self.in_progress -= 1
        if completed:
            self._completed.append((now, None if started is None else now - started))
