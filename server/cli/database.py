"""What every provisioning command shares: a session on a migrated database, errors, tables.

Rules of this module:
- A command opens the database with `open_session(db_url)`, which refuses, with the
  remedy, a database whose schema is not at the head revision (`db upgrade`).
- A command runs its coroutine with `run(...)`: rule violations (`ProvisioningError`),
  a missing or wrong cluster key (`ClusterKeyError`) and an unreachable database
  become one-line `click.ClickException`s, never tracebacks.
- Output is plain aligned text (`echo_table`); every command that lists or shows
  something also takes `--json` (`json_option`) and prints one JSON object whose keys
  are documented in its `--help` (`json_help`) and stay stable: scripts use those.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import click
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import make_engine, make_session_factory, missing_sqlite_file, translate_errors
from presence_ha.db.errors import ProvisioningError
from presence_ha.db.schema import head_revision
from presence_ha.server.cli.common import run_async
from presence_ha.server.cluster_key import ClusterKeyError

T = TypeVar("T")


def run(coro: Awaitable[T], *, event_loop: str = "asyncio") -> T:
    """Run a command's coroutine; rule violations become a one-line error, exit 1."""
    try:
        return run_async(coro, event_loop=event_loop)
    except (ProvisioningError, ClusterKeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # an unsupported --db URL, from db.engine.normalize_url
        raise click.ClickException(str(exc)) from exc


@contextlib.asynccontextmanager
async def open_session(db_url: str, *, check_schema: bool = True) -> AsyncIterator[AsyncSession]:
    """A session on `db_url`; the engine is disposed on exit. A SQLite file that does not
    exist is refused before anything is created (no empty `data/` left behind)."""
    missing = missing_sqlite_file(db_url) if check_schema else None
    if missing is not None:
        raise click.ClickException(
            f"no database at {missing} (schema at nothing): run `presence-ha db upgrade` with the same "
            "--data-dir/--db first, or point --data-dir/--db at an existing database"
        )
    engine = make_engine(db_url)
    try:
        if check_schema:
            async with translate_errors(), engine.connect() as connection:
                current = await connection.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
            head = head_revision()
            if current != head:
                raise click.ClickException(
                    f"database schema is at {current or 'nothing'}, not {head}: run `presence-ha db upgrade`"
                )
        async with make_session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys below).")


def json_help(shape: str) -> str:
    """The `--help` paragraph that documents a command's JSON keys (kept verbatim)."""
    return f"\b\nWith --json: {shape}"


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, sort_keys=False))


def on_off(value: bool) -> str:
    return "on" if value else "off"


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print `rows` as left-aligned columns under `headers`."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
