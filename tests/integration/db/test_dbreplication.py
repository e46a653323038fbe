"""`dbreplication status` / `runtimestate` (SPEC §7) on both backends, with a replica
that matches and one that lags behind."""

from __future__ import annotations

import asyncio
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


def test_healthy_single_database(cli):
    provision_pairs(cli)
    status = cli("dbreplication", "status").output
    runtime = cli("dbreplication", "runtimestate").output
    assert "mismatches: 0" in status and "verdict: healthy" in status
    for node in ("a1", "a2", "b1", "b2"):
        assert any(line.split()[:2] == [node, "2"] for line in runtime.splitlines()), runtime
    if cli.url.startswith("sqlite"):
        assert "single shared database file, no replication: setup value 2 for every node (one database)" in runtime
    else:
        assert "backend: postgresql (primary)" in runtime
        assert "no streaming standby attached" in runtime


def test_replica_compared_table_by_table(cli, copy_of):
    provision_pairs(cli)
    cli("user", "add", "alice", "--password", "pw")
    replica = copy_of(cli.url)
    assert "verdict: healthy" in cli("dbreplication", "status", "--replica", replica).output
    cli("user", "add", "bob", "--password", "pw")  # the replica now lags behind
    result = cli("dbreplication", "status", "--replica", replica, ok=False)
    assert result.exit_code == 1
    mismatched = {line.split()[0] for line in result.output.splitlines()[3:-1]}
    assert mismatched == {"users", "user_credentials"}, result.output
    assert "NOT healthy" in result.output
    runtime = cli("dbreplication", "runtimestate", "--replica", replica, ok=False).output
    assert any(line.split()[:2] == ["a1", "3"] for line in runtime.splitlines()), runtime
