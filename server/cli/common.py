"""Options shared by every command: where the database is, and how errors look.

Rules: every command finds the database through `--db URL`, the `PRESENCE_HA_DB`
environment variable, or `--data-dir DIR` (the embedded SQLite file), in that order.
A command that needs the cluster secret (`db_key_options`) also finds the cluster key:
`--cluster-key PATH`, `$PRESENCE_HA_CLUSTER_KEY`, or `cluster.key` in the data
directory (`server.cluster_key.key_path`). A command fails with one clear line and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from presence_ha.db.engine import ENV_DB_URL, DatabaseUnavailable, sqlite_url_for
from presence_ha.server.cluster_key import ENV_CLUSTER_KEY, KEY_FILE, key_path

DEFAULT_DATA_DIR = "data"
T = TypeVar("T")


def resolve_db_url(db: str | None, data_dir: str | None) -> str:
    if db:
        return db
    env = os.environ.get(ENV_DB_URL)
    if env:
        return env
    return sqlite_url_for(data_dir or DEFAULT_DATA_DIR)


def db_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--db` and `--data-dir`, and pass the resolved `db_url` instead."""

    @click.option("--db", "db", metavar="URL", help=f"Database URL (else ${ENV_DB_URL}, else --data-dir).")
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help=f"Data directory holding the embedded SQLite database (default: ./{DEFAULT_DATA_DIR}).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, db: str | None, data_dir: str | None, **kwargs: Any) -> Any:
        return func(*args, db_url=resolve_db_url(db, data_dir), **kwargs)

    return wrapper


def db_key_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`db_options` plus `--cluster-key`: pass the resolved `db_url` and `key_path`."""

    @click.option("--db", "db", metavar="URL", help=f"Database URL (else ${ENV_DB_URL}, else --data-dir).")
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help=f"Data directory holding the embedded SQLite database and {KEY_FILE} (default: ./{DEFAULT_DATA_DIR}).",
    )
    @click.option("--cluster-key", "cluster_key", type=click.Path(dir_okay=False), metavar="PATH",
                  help=f"The cluster key file (else ${ENV_CLUSTER_KEY}, else {KEY_FILE} in the data directory, "
                  "or beside an SQLite --db file).")
    @functools.wraps(func)
    def wrapper(*args: Any, db: str | None, data_dir: str | None, cluster_key: str | None, **kwargs: Any) -> Any:
        db_url = resolve_db_url(db, data_dir)
        return func(*args, db_url=db_url, key_path=key_path(cluster_key, data_dir, db_url), **kwargs)

    return wrapper


def run_async(coro: Awaitable[T], *, event_loop: str = "asyncio") -> T:
    """Run a command's coroutine (on uvloop or asyncio's own loop); turn known
    failures into a one-line error."""
    try:
        if event_loop == "uvloop":
            import uvloop

            return uvloop.run(coro)  # type: ignore[arg-type]
        return asyncio.run(coro)  # type: ignore[arg-type]
    except DatabaseUnavailable as exc:
        raise click.ClickException(f"database unavailable: {exc}") from exc
