"""Migrations: `upgrade head` on an empty database equals the models, on both backends,
and two nodes upgrading at the same moment both succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from presence_ha.db import schema
from presence_ha.db.engine import make_engine
from presence_ha.db.models import metadata

ROOT = Path(__file__).resolve().parents[3]


async def diff_with_models(url: str) -> list:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_matches_the_models(db_url):
    assert await schema.current_revision(db_url) is None
    assert len(await diff_with_models(db_url)) > 0  # the comparison can see a difference
    assert await schema.upgrade(db_url) == schema.head_revision()
    assert await diff_with_models(db_url) == []
    assert await schema.upgrade(db_url) == schema.head_revision()  # idempotent


def test_migrations_are_found_relative_to_the_package():
    assert schema.MIGRATIONS_DIR == ROOT / "migrations"
    assert (schema.MIGRATIONS_DIR / "env.py").is_file()
    newest = max(schema.MIGRATIONS_DIR.glob("versions/[0-9]*_*.py")).name.split("_")[0]
    assert schema.head_revision() == newest


def test_two_nodes_upgrading_at_once(db_url, tmp_path):
    exe = Path(sys.executable).with_name("presence-ha")
    env = {**os.environ, "PRESENCE_HA_DB": db_url}
    procs = [
        subprocess.Popen([str(exe), "db", "upgrade"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert all(f"database schema at revision {schema.head_revision()}" in out for out in outputs)


def test_commands_refuse_an_unmigrated_database(db_url):
    from tests.integration.db.conftest import Cli

    Cli(db_url).fails("cluster", "show", match="run `presence-ha db upgrade`")
