"""The node's periodic database replication check, exported as `db_replication_setup`.

Rules of this module:
- Every `interval_s` the probe reads the replication report of the database the node
  writes to (`db.replication.replication_status`, the primary's own view: standbys and
  their sync state; no replica is compared) and sets the gauge to its setup value
  (2 healthy, 0 none, 1 not synchronous, 4 in recovery). The alerting rules
  (`deploy/prometheus/alerts.yml`) read the gauge.
- A database that does not answer leaves the last value: losing the database is the
  SRM's business (SPEC §6 row 13), not a replication fault. One DEBUG line says so.
- It is an adapter: it owns one task, started and stopped by `server.node`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.db.replication import replication_status

log = logging.getLogger(__name__)


class Settable(Protocol):
    def set(self, value: float) -> None: ...


class ReplicationProbe:
    def __init__(self, sessions: Callable[[], AsyncSession], gauge: Settable, interval_s: float) -> None:
        self._sessions, self._gauge, self._interval_s = sessions, gauge, interval_s
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> int | None:
        """One check: the setup value now (None: the database did not answer)."""
        try:
            async with self._sessions() as session:
                value = (await replication_status(session)).setup_value
        except (DatabaseUnavailable, SQLAlchemyError, OSError) as exc:
            log.debug("replication check skipped: the database did not answer: %s", exc)
            return None
        self._gauge.set(value)
        return value

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replication-probe")

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
