"""Liveness of the database and of the peer (SPEC §4, §9), decided from samples.

Rules of this module:
- Pure: no asyncio, database or clock. The runner measures (how a database check
  ended, how late its event loop ran meanwhile, how long ago another write
  completed, the peer's `alive_at` with this node's monotonic time) and feeds the
  samples here; what comes back is the SRM event to feed, or None.
- Database: a check that fails (refused, errored) is a *failing* check. A check
  that does not answer within its limit counts as *slow*, and `DB_SLOW_CHECKS`
  slow checks in a row are failing too. A slow check is not counted when this
  node's event loop ran late by `SATURATED_LAG_SHARE` of the limit or more meanwhile
  (the time went to the node, not the database), nor when another write completed
  within the limit (the database is busy, its writer queue long). Seen in a
  10,000-user re-login storm on SQLite: two slow checks in a row made the backup
  declare Database Failure and redirect everyone to the dead node.
- Failing checks are not yet a Database Failure: a promotion of the replicated
  database (issue #17) takes it from both nodes for a few seconds, and that is no
  node failure. Each node tells its peer in every heartbeat whether its checks pass
  and how long ago its database last answered one (`PeerDbReport`); the outage began
  when this node's first failing check ended (t1). While its checks fail:

  | peer heard (1) | peer answered (2) | outage (3) | verdict                           |
  |----------------|-------------------|------------|-----------------------------------|
  | no             | -                 | -          | Database Failure (`PEER_UNKNOWN`) |
  | yes            | yes               | -          | Database Failure (`ALONE`)        |
  | yes            | no                | >= grace   | Database Failure (`LONG`)         |
  | yes            | no                | < grace    | no event (`SHARED`): wait         |

  (1) a heartbeat of the peer arrived within `peer_fresh_s`. If not (never, or the
      link is down), nobody says the outage is shared, and a peer that stops hearing
      us judges us by our stale `alive_at`: stop serving now, as before the peer
      reports existed.
  (2) the peer's database answered it at or after t1, and a check of this node that
      started `ALONE_AFTER_S` or more after that answer still failed: this node
      alone lost the database (SPEC §6 rows 13, 22). The margin lets this node's
      connection pool follow a promotion a little later than the peer's did.
  (3) now - t1 against `db_outage_grace_s`: no promotion takes that long.
  `SHARED` is a promotion: services keep running, nobody moves or is redirected,
  and the node carries on when its checks pass again (no event, nothing changed).
  A peer whose heartbeats lack the report (an older version) reads as "checks pass,
  answered just now": its node then gets `ALONE` at its next failing check, as before.
  A node tells its peer at once when its checks start or stop failing, and after
  every failing check (so each hears the other every `FAILING_RECHECK_S` during an
  outage, not every heartbeat interval); a node whose checks pass answers a report
  of failing checks with a fresh check of its own (`answer_now`).
  Safety: while waiting, this node's heartbeats reach the peer, so the peer neither
  probes nor takes our users (it takes them only on a request, a refused connection,
  a reboot notice, or a probe after a heartbeat timeout). A silent link ends the wait
  `peer_fresh_s` (below the heartbeat timeout) plus one recheck after the peer was
  last heard; only a link cut during the outage (a double fault) brings that close
  to the peer's probe, and the peer's move still needs the database's epoch
  compare-and-set (SPEC §9), which a promotion refuses to both nodes alike.
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
DB_OUTAGE_GRACE_S = 20.0  # default of `db_outage_grace_s`: a Patroni promotion (~6-10 s) fits
FAILING_RECHECK_S = 1.0  # while its checks fail, a node checks this often (it sees the database back sooner)
ALONE_AFTER_S = 3.0  # a check failing this long after the peer's database answered it: alone (pools reconnect)


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


class Outage(Enum):
    """What this node makes of its failing checks (see the module's table)."""

    PEER_UNKNOWN = "peer unknown"  # Database Failure
    ALONE = "alone"  # Database Failure
    LONG = "long"  # Database Failure
    SHARED = "shared"  # wait: a promotion


@dataclass(frozen=True)
class DbSample:
    """One database check: how it ended, its limit, the worst loop lateness during it
    and the seconds since another write completed (all in seconds); when it started
    and ended (this node's monotonic clock)."""

    check: Check
    limit_s: float
    loop_lag_s: float = 0.0
    since_write_s: float = float("inf")
    started_at: float = 0.0
    ended_at: float = 0.0


@dataclass(frozen=True)
class DbVerdict:
    finding: Finding
    slow_in_a_row: int
    event: DbUnavailable | DbRestored | None  # to feed the machine, if the health changed
    outage: Outage | None = None  # while the checks fail


@dataclass(frozen=True)
class PeerDbReport:
    """What a heartbeat says of its sender's database: whether its checks pass, and
    the seconds since its database last answered one (a duration: no clock skew)."""

    ok: bool = True
    age_s: float = 0.0


def peer_fresh_s(heartbeat_interval_s: float, heartbeat_timeout_s: float) -> float:
    """A peer heard within this long reports for the current outage: one and a half
    heartbeat intervals, and below the heartbeat timeout (see the safety rule)."""
    return min(1.5 * heartbeat_interval_s, (heartbeat_interval_s + heartbeat_timeout_s) / 2)


def check_pause_s(heartbeat_interval_s: float, checks_ok: bool) -> float:
    """How long the watch waits between two database checks."""
    return heartbeat_interval_s if checks_ok else min(heartbeat_interval_s, FAILING_RECHECK_S)


def check_limit_s(heartbeat_timeout_s: float) -> float:
    """How long one database check may take."""
    return max(MIN_CHECK_LIMIT_S, heartbeat_timeout_s)


class DatabaseLiveness:
    """The database's health as this node's SRM sees it, and as its peer reports it."""

    def __init__(self, slow_checks: int = DB_SLOW_CHECKS, saturated_share: float = SATURATED_LAG_SHARE,
                 grace_s: float = DB_OUTAGE_GRACE_S, peer_fresh: float = 0.0) -> None:
        self._slow_checks, self._saturated_share = slow_checks, saturated_share
        self._grace_s, self._peer_fresh_s = grace_s, peer_fresh
        self._ok = True  # False: a Database Failure was declared (DbUnavailable fed)
        self._slow = 0
        self._checks_ok = True
        self._answered_at: float | None = None  # when a check of mine last answered
        self._failing_since: float | None = None  # t1: when the first failing check of this outage ended
        self._last_fail_start = float("-inf")
        self._peer_heard_at: float | None = None
        self._peer_answered_at: float | None = None  # the peer's database's first answer since t1 (my clock)

    def configure(self, grace_s: float, peer_fresh: float) -> None:
        """The timers of the machine (re)installed now."""
        self._grace_s, self._peer_fresh_s = grace_s, peer_fresh

    @property
    def ok(self) -> bool:
        """No Database Failure declared."""
        return self._ok

    @property
    def checks_ok(self) -> bool:
        """This node's last database check passed (what its heartbeats report)."""
        return self._checks_ok

    def report(self, now: float) -> PeerDbReport:
        """What this node's heartbeat tells the peer of its database."""
        age = 0.0 if self._answered_at is None else max(0.0, now - self._answered_at)
        return PeerDbReport(self._checks_ok, round(age, 3))

    def sample(self, s: DbSample) -> DbVerdict:
        """Judge one check; the verdict carries the event if the health changed."""
        finding = self._judge(s)
        if finding is Finding.HEALTHY:
            self._slow = 0
        elif finding is Finding.SLOW:
            self._slow += 1
        if finding is Finding.HEALTHY:
            self._checks_ok, self._failing_since, self._answered_at = True, None, s.ended_at
            self._peer_answered_at = None
            return DbVerdict(finding, self._slow, self._health(True))
        if finding is Finding.UNREACHABLE or (finding is Finding.SLOW and self._slow >= self._slow_checks):
            outage, event = self._failing(s.started_at, s.ended_at)
            return DbVerdict(finding, self._slow, event, outage)
        return DbVerdict(finding, self._slow, None)

    def failed(self, now: float = 0.0) -> DbUnavailable | None:
        """Another database operation of the SRM failed (DatabaseUnavailable) at `now`."""
        return self._failing(now, now)[1]

    def peer_reported(self, report: PeerDbReport, now: float) -> DbUnavailable | None:
        """A heartbeat of the peer arrived at `now` with `report`."""
        self._peer_heard_at = now
        answered = now - report.age_s
        if self._failing_since is not None and answered >= self._failing_since and self._peer_answered_at is None:
            self._peer_answered_at = answered
        if self._checks_ok or not self._ok:
            return None
        return self._declare(self.outage(now))

    def answer_now(self, report: PeerDbReport) -> bool:
        """The peer's checks fail while mine pass: check at once and tell it (so a
        node that alone lost the database hears so within a check, not an interval)."""
        return not report.ok and self._checks_ok

    def outage(self, now: float) -> Outage:
        """The module's table, for failing checks."""
        assert self._failing_since is not None
        if self._peer_heard_at is None or now - self._peer_heard_at > self._peer_fresh_s:
            return Outage.PEER_UNKNOWN
        if self._peer_answered_at is not None and self._peer_answered_at <= self._last_fail_start - ALONE_AFTER_S:
            return Outage.ALONE
        if now - self._failing_since >= self._grace_s:
            return Outage.LONG
        return Outage.SHARED

    def forget(self) -> None:
        """The machine was rebuilt: it assumes a healthy database (see the module rules)."""
        self._ok = True

    def _failing(self, started: float, ended: float) -> tuple[Outage, DbUnavailable | None]:
        self._checks_ok = False
        if self._failing_since is None:
            self._failing_since = ended
        self._last_fail_start = max(self._last_fail_start, started)
        outage = self.outage(ended)
        return outage, self._declare(outage) if self._ok else None

    def _declare(self, outage: Outage) -> DbUnavailable | None:
        if outage is Outage.SHARED:
            return None
        event = self._health(False)
        return event if isinstance(event, DbUnavailable) else None

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
