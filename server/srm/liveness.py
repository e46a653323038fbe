"""Liveness of the database and of the peer (SPEC §4, §9), decided from samples.

Rules of this module:
- Pure: no asyncio, database or clock. The runner measures (how a database check
  ended, how late its event loop ran meanwhile, how long ago another write
  completed, the peer's `alive_at` with this node's monotonic time) and feeds the
  samples here; what comes back is the SRM event to feed, or None.
- Database: a check that fails (refused, errored) is a Database Failure at once. A
  check that does not answer within its limit counts as *slow*, and `DB_SLOW_CHECKS`
  slow checks in a row are a Database Failure. A slow check is not counted when this
  node's event loop ran late by `SATURATED_LAG_SHARE` of the limit or more meanwhile
  (the time went to the node, not the database), nor when another write completed
  within the limit (the database is busy, its writer queue long). Seen in a
  10,000-user re-login storm on SQLite: two slow checks in a row made the backup
  declare Database Failure and redirect everyone to the dead node.
- `DbUnavailable` / `DbRestored` come only when the verdict changes. A restarted
  machine believes the database healthy (`forget`): a failure is told to it again by
  the next check, and a "restored" it never saw a loss for must not start services.
- Peer: the peer renews its `alive_at` every heartbeat interval. The first sample is
  a baseline, not a sign of life; a later different value is a renewal, stamped with
  this node's clock (so clock skew between the nodes does not matter). A probe
  (`CheckPeerLiveness`) answers alive once a renewal is seen after it started, dead
  once no renewal was seen for `stale_after_s` while the database answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from presence_ha.server.srm.events import DbRestored, DbUnavailable, PeerAliveInDatabase, PeerDeadInDatabase
from presence_ha.server.srm.table import NodeState, Reason

DB_SLOW_CHECKS = 2  # database checks in a row over their time limit that make a Database Failure
SATURATED_LAG_SHARE = 0.2  # a check whose loop ran this share of its limit late: the node is slow, not the database
MIN_CHECK_LIMIT_S = 5.0  # a database check is given at least this long


class Check(Enum):
    """How one database check (renew `alive_at`, read the peer's row) ended."""

    ANSWERED = "answered"
    FAILED = "failed"  # refused or errored (DatabaseUnavailable)
    TIMED_OUT = "timed out"


class Finding(Enum):
    """What the liveness made of one database check."""

    HEALTHY = "healthy"
    UNREACHABLE = "unreachable"
    SLOW = "slow"  # counted toward DB_SLOW_CHECKS
    NODE_SATURATED = "node saturated"  # slow, not counted: the event loop ran late
    DATABASE_BUSY = "database busy"  # slow, not counted: another write completed


@dataclass(frozen=True)
class DbSample:
    """One database check: how it ended, its limit, the worst loop lateness during it
    and the seconds since another write completed (all in seconds)."""

    check: Check
    limit_s: float
    loop_lag_s: float = 0.0
    since_write_s: float = float("inf")


@dataclass(frozen=True)
class DbVerdict:
    finding: Finding
    slow_in_a_row: int
    event: DbUnavailable | DbRestored | None  # to feed the machine, if the health changed


def check_limit_s(heartbeat_timeout_s: float) -> float:
    """How long one database check may take."""
    return max(MIN_CHECK_LIMIT_S, heartbeat_timeout_s)


class DatabaseLiveness:
    """The database's health as this node's SRM sees it."""

    def __init__(self, slow_checks: int = DB_SLOW_CHECKS, saturated_share: float = SATURATED_LAG_SHARE) -> None:
        self._slow_checks, self._saturated_share = slow_checks, saturated_share
        self._ok = True
        self._slow = 0

    @property
    def ok(self) -> bool:
        return self._ok

    def sample(self, s: DbSample) -> DbVerdict:
        """Judge one check; the verdict carries the event if the health changed."""
        finding = self._judge(s)
        if finding is Finding.HEALTHY:
            self._slow = 0
        elif finding is Finding.SLOW:
            self._slow += 1
        if finding is Finding.HEALTHY:
            event = self._health(True)
        elif finding is Finding.UNREACHABLE or (finding is Finding.SLOW and self._slow >= self._slow_checks):
            event = self._health(False)
        else:
            event = None
        return DbVerdict(finding, self._slow, event)

    def failed(self) -> DbUnavailable | None:
        """Another database operation of the SRM failed (DatabaseUnavailable)."""
        event = self._health(False)
        return event if isinstance(event, DbUnavailable) else None

    def forget(self) -> None:
        """The machine was rebuilt: it assumes a healthy database (see the module rules)."""
        self._ok = True

    def _judge(self, s: DbSample) -> Finding:
        if s.check is Check.ANSWERED:
            return Finding.HEALTHY
        if s.check is Check.FAILED:
            return Finding.UNREACHABLE
        if s.loop_lag_s >= s.limit_s * self._saturated_share:
            return Finding.NODE_SATURATED
        if s.since_write_s < s.limit_s:
            return Finding.DATABASE_BUSY
        return Finding.SLOW

    def _health(self, ok: bool) -> DbUnavailable | DbRestored | None:
        if ok == self._ok:
            return None
        self._ok = ok
        return DbRestored() if ok else DbUnavailable()


@dataclass(frozen=True)
class PeerRow:
    """The peer's `srm_state` row as sampled: its `alive_at` and its persisted state."""

    alive_at: object
    state: NodeState
    reason: Reason
    epoch: int


def stale_after_s(heartbeat_interval_s: float) -> float:
    """A live peer renews every interval: two intervals without a renewal is death."""
    return 2 * heartbeat_interval_s + 0.5


def probe_pause_s(heartbeat_interval_s: float) -> float:
    """How long a probe waits between two samples."""
    return min(0.25, heartbeat_interval_s / 4)


class PeerLiveness:
    """When this node last saw the peer renew its `alive_at` (this node's clock)."""

    def __init__(self, now: float) -> None:
        self._value: object = None
        self._changed_at = now
        self._seen = False

    @property
    def renewed_at(self) -> float:
        return self._changed_at

    def observe(self, row: PeerRow | None, now: float) -> None:
        """A sample of the peer's row (None: no row, or no peer)."""
        value = row.alive_at if row is not None else None
        if not self._seen:
            self._seen = True
            self._value = value  # a baseline, not a sign of life
        elif value != self._value:
            self._value, self._changed_at = value, now

    def verdict(self, row: PeerRow | None, started: float, now: float, *, db_ok: bool, stale_after: float,
                ha_enabled: bool) -> PeerAliveInDatabase | PeerDeadInDatabase | None:
        """The answer of a probe that started at `started`, after the sample `row`
        (None: none could be read); None: no verdict yet, sample again."""
        if row is not None and self._changed_at > started:
            return PeerAliveInDatabase(row.state, row.reason, row.epoch, ha_enabled)
        if db_ok and now - self._changed_at >= stale_after:
            return PeerDeadInDatabase()
        return None
