"""`dbreplication status` / `runtimestate` (SPEC §7) on both backends, with a replica
that matches and one that lags behind. Without a standby there is no replication
(setup value 0, exit status 1), yet HA may be enabled (nothing is broken). Real
streaming replication: test_dbreplication_streaming.py."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from tests.conftest import _pg_admin_connect, _pg_drop
from tests.integration.db.conftest import provision_pairs


async def _pg_copy(url: str) -> str:
    conn, _ = await _pg_admin_connect()
    src = url.rsplit("/", 1)[1]
    try:
        await conn.execute(f'CREATE DATABASE "{src}_copy" TEMPLATE "{src}"')
    finally:
        await conn.close()
    return f"{url}_copy"


@pytest.fixture
def copy_of(tmp_path):
    """copy_of(url) -> URL of a byte-for-byte copy of that database (a stand-in replica)."""
    made: list[str] = []

    def copy(url: str) -> str:
        if url.startswith("sqlite"):
            target = tmp_path / "replica.sqlite3"
            shutil.copyfile(url.removeprefix("sqlite:///"), target)
            replica = f"sqlite:///{target}"
        else:
            replica = asyncio.run(_pg_copy(url))
            made.append(replica)
        return replica

    yield copy
    for url in made:
        asyncio.run(_pg_drop(url))


def test_single_database_has_no_replication(cli):
    provision_pairs(cli)
    status = cli("dbreplication", "status", ok=False)
    runtime = cli("dbreplication", "runtimestate", ok=False)
    assert status.exit_code == runtime.exit_code == 1
    assert "mismatches: 0" in status.output and "replication setup: 0 (no replication)" in status.output
    for node in ("a1", "a2", "b1", "b2"):
        assert any(line.split()[:2] == [node, "0"] for line in runtime.output.splitlines()), runtime.output
    if cli.url.startswith("sqlite"):
        assert "standbys: none (SQLite has no replication)" in runtime.output
        assert "verdict: NOT healthy - SQLite: one database file, no replication" in runtime.output
    else:
        assert "backend: postgresql (primary)" in runtime.output
        assert "standbys: none attached" in runtime.output
    data = json.loads(cli("dbreplication", "runtimestate", "--json", ok=False).output)
    assert (data["setup_value"], data["healthy"], data["fault"], data["standbys"]) == (0, False, None, [])
    cli("group", "edit", "g1", "--ha", "on")  # no replication is no fault: HA may be enabled


def test_replica_compared_table_by_table(cli, copy_of):
    provision_pairs(cli)
    cli("user", "add", "alice", "--password", "pw")
    replica = copy_of(cli.url)
    assert "mismatches: 0" in cli("dbreplication", "status", "--replica", replica, ok=False).output
    cli("user", "add", "bob", "--password", "pw")  # the replica now lags behind
    result = cli("dbreplication", "status", "--replica", replica, ok=False)
    assert result.exit_code == 1
    mismatched = {line.split()[0] for line in result.output.splitlines()[5:-1]}
    assert mismatched == {"users", "user_credentials"}, result.output
    assert "NOT healthy" in result.output
    runtime = cli("dbreplication", "runtimestate", "--replica", replica, ok=False).output
    assert any(line.split()[:2] == ["a1", "3"] for line in runtime.splitlines()), runtime
