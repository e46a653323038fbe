"""What every provisioning command shares: a session on a migrated database, errors, tables.

Rules of this module:
- A command opens the database with `open_session(db_url)`, which refuses, with the
  remedy, a database whose schema is not at the head revision (`db upgrade`).
- A command runs its coroutine with `run(...)`: rule violations (`ProvisioningError`)
  and an unreachable database become one-line `click.ClickException`s, never
  tracebacks.
- Output is plain aligned text (`echo_table`), stable for scripts and tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import click
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import make_engine, make_session_factory, translate_errors
from presence_ha.db.errors import ProvisioningError
from presence_ha.db.schema import head_revision
from presence_ha.server.cli.common import run_async

T = TypeVar("T")


def run(coro: Awaitable[T], *, event_loop: str = "asyncio") -> T:
    """Run a command's coroutine; rule violations become a one-line error, exit 1."""
    try:
        return run_async(coro, event_loop=event_loop)
    except ProvisioningError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # an unsupported --db URL, from db.engine.normalize_url
        raise click.ClickException(str(exc)) from exc


@contextlib.asynccontextmanager
async def open_session(db_url: str, *, check_schema: bool = True) -> AsyncIterator[AsyncSession]:
    """A session on `db_url`; the engine is disposed on exit."""
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


def on_off(value: bool) -> str:
    return "on" if value else "off"


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print `rows` as left-aligned columns under `headers`."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
