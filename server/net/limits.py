"""Limits of the client port: a per-connection token bucket, a failed-login throttle and
the login gate.

Rules of this module:
- Pure bookkeeping; the caller passes `now` (monotonic seconds), so tests need no clock.
- `TokenBucket`: bytes refill at `rate` per second up to `burst`; a read that finds the
  bucket empty is over the limit (the adapter ends the stream with `policy-violation`).
- `AuthThrottle` (the lockout policy): login attempts are throttled BEFORE the password
  is checked, per key (`ip:<address>` and `user:<account>`). Each key remembers its
  failures for `window_s`; the n-th attempt of a key (failures and attempts still in
  flight counted, see `reserve`) is checked no sooner than `base_s * 2**(n-2)` (capped
  at `max_s`) after the previous one of that key, so parallel guesses are checked one
  at a time, spaced like sequential ones, and a success waits exactly like a failure.
  An attempt that would wait longer than `max_s` is refused at once, unchecked
  (`temporary-auth-failure`). A success clears the account's failures (not the
  address's). An address without recent failures is not slowed at all (a NAT or a
  load generator logs many users in at once); an account's first `FREE_PARALLEL`
  attempts in flight are free (a user's devices log in together).
- `AddressBook`: connections per source address, and how many of them are not yet
  authenticated (`address_refusal`: beyond a cap a new connection is refused at once).
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
  The gate is fair across addresses (`enter(now, address)`): when it is full, a
  newcomer whose address holds fewer places than the address holding the most is
  still admitted, and that heaviest address gives back one place (`Admission.evict`:
  the port ends its oldest negotiating connection with `resource-constraint`). So one
  address filling the gate with idle connections does not lock out anyone else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


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


@dataclass
class _KeyState:
    failures: deque[float] = field(default_factory=deque)  # times of recent failures
    pending: int = 0  # attempts reserved and not yet resolved
    next_at: float = float("-inf")  # the next attempt of this key is checked no sooner


class AuthThrottle:
    MAX_KEYS = 100_000  # bound memory under a spray of usernames
    FREE_PARALLEL = 2  # attempts of an account in flight at once that are not slowed

    def __init__(self, base_s: float, max_s: float, window_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.window_s = window_s
        self._keys: dict[str, _KeyState] = {}

    def _state(self, key: str, now: float) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self.MAX_KEYS:
                self._forget_one()
            state = self._keys[key] = _KeyState()
        times = state.failures
        while times and now - times[0] > self.window_s:
            times.popleft()
        return state

    def _forget_one(self) -> None:
        """Drop the oldest idle key (one with attempts in flight is kept: its count matters)."""
        for key, state in self._keys.items():
            if not state.pending:
                del self._keys[key]
                return
        self._keys.pop(next(iter(self._keys)))

    def _gap(self, count: int) -> float:
        """How long after the previous attempt the `count`-th one is checked."""
        if count < 2:
            return 0.0
        return min(self.max_s, self.base_s * 2 ** (count - 2))

    def _count(self, key: str, state: _KeyState) -> int | None:
        """The ordinal of a new attempt of `key` (None: the key does not slow it)."""
        failures = len(state.failures)
        if key.startswith("ip:"):
            return failures + state.pending + 1 if failures else None
        if failures:
            return failures + state.pending + 1
        return max(1, state.pending + 2 - self.FREE_PARALLEL)

    def reserve(self, keys: list[str], now: float) -> float | None:
        """A login attempt of `keys` wants its password checked: the wait before the
        check (its slot is reserved: `resolve` or `release` it later), or None when the
        wait would exceed `max_s` (refuse the attempt unchecked; nothing is reserved)."""
        start = now
        plans: list[tuple[_KeyState, int | None]] = []
        for key in keys:
            state = self._state(key, now)
            count = self._count(key, state)
            if count is not None:
                start = max(start, state.next_at, now + self._gap(count) if state.failures else now)
            plans.append((state, count))
        if start - now > self.max_s:
            return None
        for key, (state, _count) in zip(keys, plans, strict=True):
            state.pending += 1
            following = self._count(key, state)  # the ordinal of the attempt after this one
            if following is not None:
                state.next_at = max(state.next_at, start + self._gap(following))
        return start - now

    def release(self, keys: list[str]) -> None:
        """A reserved attempt ended unchecked (connection lost, temporary failure)."""
        for key in keys:
            state = self._keys.get(key)
            if state is not None and state.pending:
                state.pending -= 1

    def resolve(self, keys: list[str], now: float, success: bool) -> None:
        """The password of a reserved attempt (or of none: a malformed exchange) was
        checked: a failure is remembered under every key; a success clears the
        account's failures."""
        self.release(keys)
        for key in keys:
            state = self._state(key, now)
            if not success:
                state.failures.append(now)
            elif key.startswith("user:"):
                state.failures.clear()

    def delay_for(self, key: str, now: float) -> float:
        """How long a new attempt of `key` alone would wait now (for tests and logs)."""
        state = self._state(key, now)
        count = self._count(key, state)
        if count is None:
            return 0.0
        return max(0.0, state.next_at - now, self._gap(count) if state.failures else 0.0)


class AddressBook:
    """Connections per source address, and how many are not yet authenticated."""

    def __init__(self, max_per_address: int, max_unauthenticated: int) -> None:
        self.max_per_address = max_per_address
        self.max_unauthenticated = max_unauthenticated
        self._total: dict[str, int] = {}
        self._unauthenticated: dict[str, int] = {}
        self.refused = 0

    def address_refusal(self, address: str) -> str | None:
        """Why a new connection from `address` is refused (None: it is counted in)."""
        if self._total.get(address, 0) >= self.max_per_address:
            self.refused += 1
            return f"too many connections from {address} (limit {self.max_per_address})"
        if self._unauthenticated.get(address, 0) >= self.max_unauthenticated:
            self.refused += 1
            return f"too many unauthenticated connections from {address} (limit {self.max_unauthenticated})"
        self._total[address] = self._total.get(address, 0) + 1
        self._unauthenticated[address] = self._unauthenticated.get(address, 0) + 1
        return None

    @staticmethod
    def _down(counts: dict[str, int], address: str) -> None:
        left = counts.get(address, 0) - 1
        if left > 0:
            counts[address] = left
        else:
            counts.pop(address, None)

    def authenticated(self, address: str) -> None:
        """A counted connection authenticated (bound or resumed a session)."""
        self._down(self._unauthenticated, address)

    def closed(self, address: str, authenticated: bool) -> None:
        """A counted connection ended."""
        self._down(self._total, address)
        if not authenticated:
            self._down(self._unauthenticated, address)

    def count(self, address: str) -> tuple[int, int]:
        """(connections, unauthenticated connections) of `address`."""
        return self._total.get(address, 0), self._unauthenticated.get(address, 0)


@dataclass(frozen=True)
class Admission:
    """The gate's answer to a newcomer: `admitted`, and if so maybe an address (`evict`)
    that must give back one place: the port ends its oldest negotiating connection."""

    admitted: bool
    evict: str | None = None

    def __bool__(self) -> bool:
        return self.admitted


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
        self._held: dict[str, int] = {}  # places held per address
        self.evicted = 0  # negotiating connections ended to make room for another address

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

    def enter(self, now: float, address: str = "") -> Admission:
        """Admit one more negotiating connection from `address`. When full, the newcomer
        still gets in if its address holds fewer places than the heaviest one minus one,
        which then gives one back (`evict`); otherwise it is refused (counted as shed)."""
        held = self._held.get(address, 0)
        evict = None
        if self.in_progress >= self.limit(now):
            heaviest = max(self._held, key=self._held.__getitem__, default=None)
            if heaviest is None or heaviest == address or self._held[heaviest] <= held + 1:
                self.shed += 1
                return Admission(False)
            evict = heaviest
            self.evicted += 1
        self.in_progress += 1
        self._held[address] = held + 1
        return Admission(True, evict)

    def held(self, address: str) -> int:
        return self._held.get(address, 0)

    def leave(self, now: float, completed: bool, started: float | None = None, address: str = "") -> None:
        """A negotiating connection is done: `completed` if it bound (or resumed) a
        session; `started` when it entered (its login time is measured)."""
        self.in_progress -= 1
        left = self._held.get(address, 0) - 1
        if left > 0:
            self._held[address] = left
        else:
            self._held.pop(address, None)
        if completed:
            self._completed.append((now, None if started is None else now - started))
