"""`db.engine.WRITES`: when a write statement last completed, on the async engine and on
the hot path (a busy database is told from a lost one by it, srm/liveness.py)."""

from __future__ import annotations

import time

from sqlalchemy import text

from presence_ha.db.engine import WRITES, make_engine
from presence_ha.db.hotpath import HotPath


async def test_writes_are_noted_and_reads_are_not(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite3'}"
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            before = time.monotonic()
            await conn.execute(text("SELECT 1"))
            assert WRITES.at < before  # a read is no progress of the writer
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            assert WRITES.at >= before
        hot = HotPath(url)
        try:
            before = time.monotonic()
            await hot.run(lambda c: c.execute(text("UPDATE t SET x = 2")))
            assert WRITES.at >= before
        finally:
            await hot.dispose()
    finally:
        await engine.dispose()
