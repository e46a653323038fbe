"""The SRM's liveness sampling: the database and the peer's `alive_at` (SPEC §4, §9).

Rules of this module:
- The adapter half of `liveness`: it measures, `liveness` judges. Every heartbeat
  interval `run()` renews this node's `alive_at` and reads the peer's row, within
  `liveness.check_limit_s`, watching the event loop's lateness meanwhile
  (`LoopLag`) and the last completed write (`db.engine.WRITES`).
- `probe(peer)` executes `CheckPeerLiveness`: it samples until `liveness` has a
  verdict. A sample the database refuses gives no verdict; it tries again.
- Every verdict's event is posted to the SRM inbox; nothing here decides a state.
- `use(setup)` tells it the timers and the peer of the machine (re)installed now.
- The peer's view of the database (issue #17): `report()` is what this node's
  heartbeats say of its checks; `peer_reported(heartbeat)` gives the peer's to
  `liveness`. When this node's checks start or stop failing, after each failing
  check, and when the peer's fail while ours pass
  (`liveness.DatabaseLiveness.answer_now`), the peer is told at once (`tell_peer`),
  after a fresh check in the latter case. While its checks
  fail the watch checks every `liveness.FAILING_RECHECK_S`, and when they pass
  again it calls `db_back` (the runner persists what it could not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import srm_state
from presence_ha.db.engine import WRITES, DatabaseUnavailable
from presence_ha.server.loop_lag import LoopLag
from presence_ha.server.srm import liveness
from presence_ha.server.srm.events import DbUnavailable, HeartbeatReceived
from presence_ha.server.srm.inbox import SrmInbox
from presence_ha.server.srm.setup import Setup
from presence_ha.server.srm.table import NodeState, Reason

log = logging.getLogger(__name__)


class LivenessWatch:
    def __init__(self, node: str, session_factory: async_sessionmaker[AsyncSession], inbox: SrmInbox,
                 tell_peer: Callable[[], None] = lambda: None, db_back: Callable[[], None] = lambda: None) -> None:
        self._node, self._db, self._inbox = node, session_factory, inbox
        self._tell_peer, self._db_back = tell_peer, db_back
        self._database = liveness.DatabaseLiveness()
        self._peer = liveness.PeerLiveness(time.monotonic())
        self._setup: Setup | None = None
        self._wake = asyncio.Event()
        self._answer = False  # the peer's checks fail: tell it after our next check

    def use(self, setup: Setup) -> None:
        """The machine was (re)installed from `setup`."""
        self._setup = setup
        t = setup.timers
        self._database.configure(setup.db_outage_grace_s,
                                 liveness.peer_fresh_s(t.heartbeat_interval_s, t.heartbeat_timeout_s))

    def machine_rebuilt(self) -> None:
        """A rebuilt machine assumes a healthy database (see `liveness`)."""
        self._database.forget()

    def report(self) -> liveness.PeerDbReport:
        """What this node's heartbeat tells the peer of its database."""
        return self._database.report(time.monotonic())

    def peer_reported(self, heartbeat: HeartbeatReceived) -> None:
        """A heartbeat of the peer arrived: its view of the database."""
        report = liveness.PeerDbReport(heartbeat.peer_db_ok, heartbeat.peer_db_age_s)
        event = self._database.peer_reported(report, time.monotonic())
        if event is not None:
            log.warning("srm %s: database unreachable while the peer's database answered %.1fs ago: "
                        "Database Failure", self._node, report.age_s)
            self._inbox.post(event)
        if self._database.answer_now(report):
            self._answer = True
            self._wake.set()

    def failed(self) -> None:
        """Another database operation of the SRM failed (DatabaseUnavailable)."""
        was = self._database.checks_ok
        event = self._database.failed(time.monotonic())
        if event is not None:
            self._inbox.post(event)
        if was:
            self._tell_peer()
            self._wake.set()  # check now, and every second from now on

    async def run(self) -> None:
        """Check the database every heartbeat interval and report its health."""
        while True:
            assert self._setup is not None
            t = self._setup.timers
            was = self._database.checks_ok
            sample = await self._check(liveness.check_limit_s(t.heartbeat_timeout_s), was)
            verdict = self._database.sample(sample)
            self._log(sample, verdict, was)
            if verdict.event is not None:
                self._inbox.post(verdict.event)
            now_ok = self._database.checks_ok
            if not now_ok or now_ok != was or self._answer:  # see `liveness`: the peer hears of an outage
                self._answer = False
                self._tell_peer()
            if now_ok and not was:
                self._db_back()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), liveness.check_pause_s(t.heartbeat_interval_s, now_ok))

    async def probe(self, peer: str) -> None:
        """CheckPeerLiveness: sample the peer's `alive_at` until `liveness` has a verdict."""
        assert self._setup is not None
        interval = self._setup.timers.heartbeat_interval_s
        started = time.monotonic()
        while True:
            answered = True
            try:
                row = await self._renew_and_sample()
            except DatabaseUnavailable:
                row, answered = None, False  # no verdict without the database: try again
            db_ok = answered and self._database.checks_ok  # never "dead" while our own checks fail
            event = self._peer.verdict(row, started, time.monotonic(), db_ok=db_ok,
                                       stale_after=liveness.stale_after_s(interval), ha_enabled=self._setup.ha_enabled)
            if event is not None:
                self._inbox.post(event)
                return
            await asyncio.sleep(liveness.probe_pause_s(interval))

    async def _check(self, limit_s: float, was_ok: bool) -> liveness.DbSample:
        lag = LoopLag()
        started = time.monotonic()
        try:
            async with lag.watching(), asyncio.timeout(limit_s):
                await self._renew_and_sample()
        except TimeoutError:
            now = time.monotonic()
            return liveness.DbSample(liveness.Check.TIMED_OUT, limit_s, lag.worst_s, now - WRITES.at, started, now)
        except DatabaseUnavailable as exc:
            if was_ok:  # once per outage: while failing, checks run every second
                log.warning("srm %s: database unreachable: %s", self._node, exc)
            return liveness.DbSample(liveness.Check.FAILED, limit_s, started_at=started, ended_at=time.monotonic())
        return liveness.DbSample(liveness.Check.ANSWERED, limit_s, started_at=started, ended_at=time.monotonic())

    async def _renew_and_sample(self) -> liveness.PeerRow | None:
        peer = self._setup.peer if self._setup is not None else None
        async with self._db() as session:
            await srm_state.renew_alive(session, self._node)
            row = await srm_state.read_state(session, peer.name) if peer else None
        sample = liveness.PeerRow(row.alive_at, NodeState(row.state), Reason(row.reason), row.epoch) if row else None
        self._peer.observe(sample, time.monotonic())
        return sample

    def _log(self, s: liveness.DbSample, v: liveness.DbVerdict, was_ok: bool) -> None:
        F = liveness.Finding
        if v.finding is F.HEALTHY and not was_ok:
            log.warning("srm %s: database answers again", self._node)
        if v.outage is liveness.Outage.SHARED and was_ok:
            log.warning("srm %s: database checks fail and the peer's database has not answered since: a shared "
                        "outage (a promotion?), not a node failure; Database Failure only if it lasts %.0fs or "
                        "the peer reaches the database", self._node, self._setup.db_outage_grace_s if self._setup
                        else liveness.DB_OUTAGE_GRACE_S)
        elif v.event is not None and isinstance(v.event, DbUnavailable):
            log.warning("srm %s: Database Failure (%s)", self._node, v.outage.value if v.outage else "")
        if v.finding is F.NODE_SATURATED:
            log.warning("srm %s: database check took over %.0fs while this node's event loop ran up to %.1fs late: "
                        "the node is saturated, not the database (not counted)", self._node, s.limit_s, s.loop_lag_s)
        elif v.finding is F.DATABASE_BUSY:
            log.warning("srm %s: database check took over %.0fs, but a write completed %.1fs ago: the database is "
                        "busy, not lost (not counted)", self._node, s.limit_s, s.since_write_s)
        elif v.finding is F.SLOW:
            log.warning("srm %s: database check took over %.0fs (%d in a row)", self._node, s.limit_s, v.slow_in_a_row)
