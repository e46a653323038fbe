"""Schema upgrades: bring any database to the head revision with Alembic (STYLE §6).

Rules of this module:
- The Alembic configuration is built in code from the installed `migrations`
  package, so upgrades work from a wheel as well as from a checkout.
- `upgrade` is async and runs Alembic on the project's async engine via `run_sync`;
  the locking that makes concurrent upgrades safe lives in `migrations/env.py`.
- The schema is only ever created by migrations, never by `metadata.create_all`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from presence_ha import migrations
from presence_ha.db.engine import make_engine, missing_sqlite_file, translate_errors

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    """An Alembic `Config` pointing at the packaged migrations (and `url`, if given)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/versions is empty"
    return head


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database at `url` to `revision`; return the revision it is now at."""
    engine = make_engine(url, pool_size=1)
    try:
        async with translate_errors():
            async with engine.connect() as connection:
                await connection.run_sync(_upgrade, revision)
            async with engine.connect() as connection:
                return await connection.run_sync(_current)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at (None: never migrated, or a SQLite file
    that does not exist, which is left uncreated)."""
    if missing_sqlite_file(url) is not None:
        return None
    engine = make_engine(url, pool_size=1)
    try:
        async with translate_errors(), engine.connect() as connection:
            return await connection.run_sync(_current)
    finally:
        await engine.dispose()
