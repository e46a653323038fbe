"""Shared fixtures: a fresh real database per test, on SQLite and on PostgreSQL.

Rules:
- `db_url` is parametrized over both backends. SQLite is a temp file; PostgreSQL is a
  brand-new database on the local server, dropped afterwards.
- PostgreSQL missing: the test is skipped locally, but with CI=true it fails (the
  house rule: in CI the PostgreSQL tests must run).
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

PG_ADMIN_DSNS = (
    os.environ.get("PRESENCE_HA_TEST_PG", ""),
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _pg_admin_connect():
    import asyncpg

    last: Exception | None = None
    for dsn in filter(None, PG_ADMIN_DSNS):
        try:
            return await asyncpg.connect(dsn, timeout=5), dsn
        except (OSError, asyncpg.PostgresError) as exc:
            last = exc
    raise ConnectionError(f"PostgreSQL not reachable: {last}")


async def _pg_create() -> str:
    conn, dsn = await _pg_admin_connect()
    name = f"pha_test_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


async def _pg_drop(url: str) -> None:
    conn, _ = await _pg_admin_connect()
    name = url.rsplit("/", 1)[1]
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _new_postgres_url() -> str:
    try:
        return asyncio.run(_pg_create())
    except ConnectionError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'presence-ha.sqlite3'}"


@pytest.fixture
def postgres_url():
    url = _new_postgres_url()
    yield url
    asyncio.run(_pg_drop(url))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty database URL (no schema yet), on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'presence-ha.sqlite3'}"
        return
    url = _new_postgres_url()
    yield url
    asyncio.run(_pg_drop(url))
