"""Alembic environment: migrate the availability database, safely from several nodes.

Rules of this module:
- The target is `db.models.metadata`; batch mode (`render_as_batch`) so SQLite can
  alter tables, one transaction per migration (warehouse's `migrations/env.py`).
- Two nodes may run `db upgrade` at the same moment. PostgreSQL: a session-level
  advisory lock (`pg_advisory_lock`) is held around the whole run. SQLite: an
  exclusive `flock` on a `<database>.migrate.lock` file next to the database (SQLite
  is single-machine, so a file lock reaches every node). The second node then finds
  the database at head and does nothing.
- SQLite foreign keys are off while migrating: batch mode recreates tables, and
  `ON DELETE CASCADE` would otherwise empty the children of a recreated table.
- The connection comes from `config.attributes["connection"]` when the caller has
  one (db/schema.py, async via run_sync), else from the URL (`-x url=`,
  `sqlalchemy.url`, or $PRESENCE_HA_DB) with the project's async engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from presence_ha.db.engine import ENV_DB_URL, make_engine
from presence_ha.db.models import metadata

# Arbitrary constant shared by every node: "presence-ha migrations".
ADVISORY_LOCK_KEY = 0x70686D69


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        transaction_per_migration=True,
        compare_type=True,
    )


@contextlib.contextmanager
def _sqlite_file_lock(connection: Connection) -> Iterator[None]:
    path = connection.engine.url.database
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _migration_lock(connection: Connection) -> Iterator[None]:
    """Serialize migrations across nodes; the connection is outside a transaction inside."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.commit()  # session-level lock: survives the per-migration commits
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()
        return
    with _sqlite_file_lock(connection):
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
        try:
            yield
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def run_with_connection(connection: Connection) -> None:
    with _migration_lock(connection):
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


def _url() -> str:
    config = context.config
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get(ENV_DB_URL)
    if not url:
        raise SystemExit(f"no database URL: pass -x url=... or set ${ENV_DB_URL}")
    return url


async def _run_online_from_url(url: str) -> None:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with_connection)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(
        url=make_url(_url()),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with_connection(connection)
    else:
        asyncio.run(_run_online_from_url(_url()))


if context.is_offline_mode():
    run_offline()
else:
    run_online()
