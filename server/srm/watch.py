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
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import srm_state
from presence_ha.db.engine import WRITES, DatabaseUnavailable
from presence_ha.server.loop_lag import LoopLag
from presence_ha.server.srm import liveness
from presence_ha.server.srm.inbox import SrmInbox
from presence_ha.server.srm.setup import Setup
from presence_ha.server.srm.table import NodeState, Reason

log = logging.getLogger(__name__)


class LivenessWatch:
    def __init__(self, node: str, session_factory: async_sessionmaker[AsyncSession], inbox: SrmInbox) -> None:
        self._node, self._db, self._inbox = node, session_factory, inbox
        self._database = liveness.DatabaseLiveness()
        self._peer = liveness.PeerLiveness(time.monotonic())
        self._setup: Setup | None = None

    def use(self, setup: Setup) -> None:
        """The machine was (re)installed from `setup`."""
        self._setup = setup

    def machine_rebuilt(self) -> None:
        """A rebuilt machine assumes a healthy database (see `liveness`)."""
        self._database.forget()

    def failed(self) -> None:
        """Another database operation of the SRM failed (DatabaseUnavailable)."""
        event = self._database.failed()
        if event is not None:
            self._inbox.post(event)

    async def run(self) -> None:
        """Check the database every heartbeat interval and report its health."""
        while True:
            assert self._setup is not None
            t = self._setup.timers
            sample = await self._check(liveness.check_limit_s(t.heartbeat_timeout_s))
            verdict = self._database.sample(sample)
            self._log(sample, verdict)
            if verdict.event is not None:
                self._inbox.post(verdict.event)
            await asyncio.sleep(t.heartbeat_interval_s)

    async def probe(self, peer: str) -> None:
        """CheckPeerLiveness: sample the peer's `alive_at` until `liveness` has a verdict."""
        assert self._setup is not None
        interval = self._setup.timers.heartbeat_interval_s
        started = time.monotonic()
        while True:
            try:
                row = await self._renew_and_sample()
            except DatabaseUnavailable:
                row = None  # no verdict without the database: try again
            event = self._peer.verdict(row, started, time.monotonic(), db_ok=self._database.ok,
                                       stale_after=liveness.stale_after_s(interval), ha_enabled=self._setup.ha_enabled)
            if event is not None:
                self._inbox.post(event)
                return
            await asyncio.sleep(liveness.probe_pause_s(interval))

    async def _check(self, limit_s: float) -> liveness.DbSample:
        lag = LoopLag()
        try:
            async with lag.watching(), asyncio.timeout(limit_s):
                await self._renew_and_sample()
        except TimeoutError:
            return liveness.DbSample(liveness.Check.TIMED_OUT, limit_s, lag.worst_s, time.monotonic() - WRITES.at)
        except DatabaseUnavailable as exc:
            log.warning("srm %s: database unreachable: %s", self._node, exc)
            return liveness.DbSample(liveness.Check.FAILED, limit_s)
        return liveness.DbSample(liveness.Check.ANSWERED, limit_s)

    async def _renew_and_sample(self) -> liveness.PeerRow | None:
        peer = self._setup.peer if self._setup is not None else None
        async with self._db() as session:
            await srm_state.renew_alive(session, self._node)
            row = await srm_state.read_state(session, peer.name) if peer else None
        sample = liveness.PeerRow(row.alive_at, NodeState(row.state), Reason(row.reason), row.epoch) if row else None
        self._peer.observe(sample, time.monotonic())
        return sample

    def _log(self, s: liveness.DbSample, v: liveness.DbVerdict) -> None:
        F = liveness.Finding
        if v.finding is F.NODE_SATURATED:
            log.warning("srm %s: database check took over %.0fs while this node's event loop ran up to %.1fs late: "
                        "the node is saturated, not the database (not counted)", self._node, s.limit_s, s.loop_lag_s)
        elif v.finding is F.DATABASE_BUSY:
            log.warning("srm %s: database check took over %.0fs, but a write completed %.1fs ago: the database is "
                        "busy, not lost (not counted)", self._node, s.limit_s, s.since_write_s)
        elif v.finding is F.SLOW:
            log.warning("srm %s: database check took over %.0fs (%d in a row)", self._node, s.limit_s, v.slow_in_a_row)
