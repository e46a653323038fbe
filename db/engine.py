"""Build the async engine and session factory from a database URL.

Rules of this module:
- Accepts the URLs users type (`sqlite:///path`, `postgresql://...`) and picks the
  async driver (aiosqlite, asyncpg) itself.
- SQLite runs in WAL mode with a busy timeout and foreign keys on, so two node
  processes can share one file. Its directory is made 0700 if missing, and
  `make_sqlite_private` makes the file and its -wal/-shm 0600 (it holds the sealed
  cluster secret, users' salted keys, presence and offline messages).
- Connection failures surface as `DatabaseUnavailable` (STYLE §6), raised by the
  data-access functions through `translate_errors`.
- `WRITES.at` is when a write statement (INSERT, UPDATE, DELETE) last completed on any
  engine of this process (`track_writes`): a database that completes writes is busy,
  not lost, even when one of them is slow (the SRM's liveness check, srm/liveness.py and srm/watch.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import CursorResult, Result, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

ENV_DB_URL = "PRESENCE_HA_DB"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# SQLite pool: the 5 + 10 default ran dry at 1,000 logins with rosters (pool timeouts,
# presence handlers failing, the SRM failing the node over). aiosqlite costs a thread
# per connection and WAL lets readers run beside the one writer, so reads scale.
# Not more: each pooled connection keeps a thread, its malloc arena and its page cache
# (bench-compare memory, 1,000 idle TLS sessions: 20 + 20 cost 202 kB/session, 10 + 10
# 155 kB; 1,000 logins at 100/s plus the 210-user presence run had no pool timeout).
SQLITE_POOL_SIZE = 10
SQLITE_MAX_OVERFLOW = 10
# Page cache per pooled connection (SQLite's default is 2 MB). In WAL mode a
# connection's cache is dropped whenever another connection commits (presence records
# are written all the time), so a big one buys little, while 10 connections each
# caching the users table cost ~18 kB of every one of 1,000 idle TLS sessions
# (logged in at 200/s: 66 -> 47 kB of RSS per session). The OS page cache still holds
# the file.
SQLITE_CACHE_KB = 256


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refused the operation for a transient reason."""


def normalize_url(url: str) -> str:
    """Return `url` with the async driver this project uses for its backend."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"unsupported database backend {backend!r}: use sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


def sqlite_url_for(data_dir: str | os.PathLike[str]) -> str:
    """The embedded default: one SQLite file inside the data directory."""
    path = Path(data_dir).resolve() / "presence-ha.sqlite3"
    return f"sqlite:///{path}"


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file `url` names when it does not exist yet (None: it exists, it is in
    memory, or `url` is not SQLite). Read-only commands check this first: opening a
    SQLite file creates it (and its directory), and a read must not leave one behind."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None: another backend, or an in-memory database)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


SQLITE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal", ".migrate.lock")


def make_sqlite_private(url: str) -> list[Path]:
    """Make the SQLite file of `url` and its -wal/-shm/-journal/.migrate.lock files 0600 (an
    older version left them 0644; SQLite gives a new -wal/-shm the database file's
    mode). The files changed; nothing for another backend."""
    database = sqlite_path(url)
    changed = []
    for suffix in SQLITE_FILE_SUFFIXES if database is not None else ():
        path = Path(f"{database}{suffix}")
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
                changed.append(path)
        except FileNotFoundError:
            continue
    return changed


def _sqlite_on_connect(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KB}")
    # Zero what an UPDATE or DELETE frees inside a page it writes anyway (no extra I/O):
    # a value sealed in place of a clear one, a delivered offline message, leave no copy.
    cursor.execute("PRAGMA secure_delete=FAST")
    cursor.close()


class WriteProgress:
    """When the last write statement completed (monotonic seconds), on any engine."""

    def __init__(self) -> None:
        self.at = float("-inf")

    def _after_execute(self, _conn, _cursor, statement: str, _parameters, _context, _executemany) -> None:
        if statement[:6].upper() in _WRITE_VERBS:
            self.at = time.monotonic()  # a float store: safe from the pool's threads


_WRITE_VERBS = frozenset(("INSERT", "UPDATE", "DELETE"))
WRITES = WriteProgress()


def track_writes(sync_engine) -> None:
    """Count this engine's writes in `WRITES`."""
    event.listen(sync_engine, "after_cursor_execute", WRITES._after_execute)


def make_engine(url: str, *, pool_size: int | None = None, echo: bool = False) -> AsyncEngine:
    """Create the async engine for `url` (any accepted spelling); `pool_size` None: the default."""
    full = normalize_url(url)
    if full.startswith("sqlite"):
        path = make_url(full).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sized = {} if path in (None, "", ":memory:") else {
            "pool_size": pool_size or SQLITE_POOL_SIZE, "max_overflow": SQLITE_MAX_OVERFLOW}
        engine = create_async_engine(full, echo=echo, **sized)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        track_writes(engine.sync_engine)
        return engine
    engine = create_async_engine(
        full,
        echo=echo,
        pool_size=pool_size or 5,
        pool_pre_ping=True,
        connect_args={"timeout": 5, "command_timeout": 10},
    )
    track_writes(engine.sync_engine)
    return engine


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn driver-level connection failures into `DatabaseUnavailable`."""
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
    except PoolTimeout as exc:  # every connection busy past the pool's timeout: no answer in time
        raise DatabaseUnavailable(f"no database connection free in time: {exc}") from exc


def server_going_away(exc: DBAPIError) -> bool:
    """PostgreSQL refuses because it stops or starts (SQLSTATE 57P01-57P03: a planned
    switchover or a promotion), or the connection broke (class 08): unavailable, not a bug."""
    state = str(getattr(exc.orig, "sqlstate", None) or "")
    return state.startswith(("08", "57P"))


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched: `AsyncSession.execute` is typed as returning
    `Result`, but for these statements it returns a `CursorResult`, which counts them."""
    return cast("CursorResult[Any]", result).rowcount
