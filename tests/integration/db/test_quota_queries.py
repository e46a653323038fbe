"""The quota checks' queries (server.quotas; db.offline, db.roster; migration 0003).

- Each check reads an index only, for the one user: never a table scan, never the
  stored stanzas (SQLite's query plans; PostgreSQL plans tiny tables with sequential
  scans, so its plans tell nothing here).
- A database from before migration 0003 keeps its offline messages, which get their
  size, so the byte quota counts them.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from presence_ha.db import offline, roster, schema
from presence_ha.db.engine import make_engine


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_quota_check_reads_a_covering_index_of_the_user(db_url) -> None:
    asyncio.run(schema.upgrade(db_url))
    params = {"domain": "d", "name": "u", "stanza": "s", "size": 1, "limit": 1, "max_bytes": 1, "uid": 1}

    async def plans() -> list[str]:
        engine = make_engine(db_url)
        found = []
        try:
            async with engine.connect() as conn:
                for stmt in (offline._STORE, roster._ITEM_COUNT, roster._PENDING_COUNT):
                    compiled = stmt.compile(dialect=sqlite.dialect())
                    values = tuple(params.get(name, 0) for name in compiled.positiontup or ())  # coalesce_N: 0
                    rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values)
                    found.append(" | ".join(row[-1] for row in rows))
        finally:
            await engine.dispose()
        return found

    store, items, pending = asyncio.run(plans())
    assert store.count("SEARCH offline_messages USING COVERING INDEX ix_offline_messages_user_id_bytes") == 2, store
    assert "SEARCH roster_items USING COVERING INDEX" in items, items
    assert "SEARCH pending_subscriptions USING COVERING INDEX" in pending, pending
    for plan in (store, items, pending):
        assert not any(f"SCAN {table}" in plan for table in ("offline_messages", "roster_items",
                                                             "pending_subscriptions", "users")), plan


def test_offline_messages_stored_before_0003_get_their_size(db_url) -> None:
    async def go() -> list[tuple[int, int]]:
        await schema.upgrade(db_url, "0002")
        engine = make_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO clusters (name, domain, secret) VALUES ('c', 'd', 's')"))
                await conn.execute(sa.text("INSERT INTO users (cluster_id, username) SELECT id, 'u' FROM clusters"))
                await conn.execute(sa.text("INSERT INTO offline_messages (user_id, stanza) SELECT id, :s FROM users"),
                                   [{"s": "<message><body>one</body></message>"}, {"s": "<message/>"}])
            await schema.upgrade(db_url)
            async with engine.connect() as conn:
                rows = await conn.execute(sa.text("SELECT length(stanza), bytes FROM offline_messages ORDER BY id"))
                return [tuple(row) for row in rows]
        finally:
            await engine.dispose()

    assert asyncio.run(go()) == [(35, 35), (10, 10)]
