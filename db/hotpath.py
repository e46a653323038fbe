"""The node's hottest database operations, at one thread hop or round trip each.

Why: through an ORM session a one-row read cost 490-650 us of CPU on this machine
(aiosqlite hops to its thread for every cursor call, pool checkout with pre-ping and
rollback on return), about a third of a login and half of a presence broadcast. The
operations a node runs per login, per presence broadcast and per routing miss run
here instead, as plain functions `fn(connection, *args)` over SQLAlchemy Core
statements (`db.users.login_record`, `db.presence.write_batch`, ...):

- SQLite: a sync engine (the stdlib driver) on a small pool of worker threads. The
  whole operation, its transaction included, is one hop to a worker: ~130 us.
- PostgreSQL: the async engine (asyncpg) without pre-ping or reset-on-return, in
  autocommit, so a read is one round trip with no BEGIN/COMMIT around it: ~180 us.
  Each statement of a write commits alone there: only batches whose rows are
  independent of one another (the presence records) are written through `run`.

Rules of this module:
- A function given to `run` touches only the connection it is handed: it runs on a
  worker thread (SQLite) or inside a greenlet (PostgreSQL), so it awaits nothing and
  shares no state with the event loop.
- Failures surface as `DatabaseUnavailable`, as everywhere in `db/`. A connection the
  server dropped (a PostgreSQL restart) is retried once on a fresh one: without
  pre-ping a pooled connection only finds out when it is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from presence_ha.db.engine import (
    DatabaseUnavailable,
    _sqlite_on_connect,
    normalize_url,
    server_going_away,
    track_writes,
)

T = TypeVar("T")
Operation = Callable[..., T]

SQLITE_THREADS = 2  # WAL readers run side by side; writes queue on SQLite's one writer anyway
PG_POOL_SIZE = 4


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(str(exc.orig or exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated or server_going_away(exc):
            raise DatabaseUnavailable(str(exc.orig or exc)) from exc
        raise
    except (OSError, ConnectionError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    except PoolTimeout as exc:  # as `engine.translate_errors`
        raise DatabaseUnavailable(f"no database connection free in time: {exc}") from exc


class HotPath:
    """`await hot.run(fn, *args)`: `fn(connection, *args)` in one transaction (SQLite)
    or in autocommit (PostgreSQL); its result, or `DatabaseUnavailable`."""

    def __init__(self, url: str) -> None:
        full = normalize_url(url)
        self.dialect = make_url(full).get_backend_name()
        self._sync: Engine | None  # SQLite: a sync engine on worker threads
        self._threads: concurrent.futures.ThreadPoolExecutor | None
        self._async: AsyncEngine | None  # PostgreSQL
        if self.dialect == "sqlite":
            sync_url = make_url(full).set(drivername="sqlite+pysqlite")
            path = sync_url.database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._sync = create_engine(sync_url, pool_size=SQLITE_THREADS, max_overflow=0,
                                       connect_args={"check_same_thread": False})  # one thread at a time
            event.listen(self._sync, "connect", _sqlite_on_connect)
            track_writes(self._sync)
            self._threads = concurrent.futures.ThreadPoolExecutor(SQLITE_THREADS, thread_name_prefix="hotpath")
            self._async = None
        else:
            self._sync = None
            self._threads = None
            self._async = create_async_engine(
                full, pool_size=PG_POOL_SIZE, max_overflow=PG_POOL_SIZE, pool_pre_ping=False,
                pool_reset_on_return=None, isolation_level="AUTOCOMMIT",
                connect_args={"timeout": 5, "command_timeout": 10},
            )
            track_writes(self._async.sync_engine)

    async def run(self, fn: Operation[T], *args: Any) -> T:
        for attempt in (1, 2):
            try:
                with _translated():
                    if self._sync is not None:
                        loop = asyncio.get_running_loop()
                        return await loop.run_in_executor(self._threads, self._run_sync, fn, args)
                    assert self._async is not None  # PostgreSQL
                    async with self._async.connect() as conn:
                        return await conn.run_sync(fn, *args)
            except DatabaseUnavailable as exc:
                if attempt == 2 or not _was_invalidated(exc):
                    raise
        raise AssertionError("unreachable")

    def _run_sync(self, fn: Operation[T], args: tuple[Any, ...]) -> T:
        assert self._sync is not None  # SQLite
        with self._sync.begin() as conn:
            return fn(conn, *args)

    async def dispose(self) -> None:
        if self._sync is not None:
            assert self._threads is not None  # made with the sync engine
            self._threads.shutdown(wait=True)
            self._sync.dispose()
        else:
            assert self._async is not None  # PostgreSQL
            await self._async.dispose()


def _was_invalidated(exc: DatabaseUnavailable) -> bool:
    cause = exc.__cause__
    return isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)


__all__ = ["Connection", "DatabaseUnavailable", "HotPath"]
