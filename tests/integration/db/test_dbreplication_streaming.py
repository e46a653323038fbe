"""`dbreplication status` / `runtimestate` on real streaming replication (issue #17 part 4).

A PostgreSQL 15 primary and a `pg_basebackup` standby, started by the fixture in a temp
dir on loopback ports the OS has free, as the `postgres` OS user (initdb refuses root).
Synchronous (`synchronous_standby_names`) gives setup value 2; asynchronous gives 1;
the standby stopped disappears from `pg_stat_replication` and the value drops to 0.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.cluster import free_ports
from tests.integration.db.conftest import Cli, provision_pairs

PG_BIN = Path("/usr/lib/postgresql/15/bin")
STANDBY = "standby1"

pytestmark = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None,
    reason="needs PostgreSQL 15 binaries (scripts/lab-packages.sh) and runuser",
)


def _as_postgres(*argv: str | Path) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], check=True, capture_output=True, timeout=120)


class Pair:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary, self.standby = root / "primary", root / "standby"
        self.primary_port, self.standby_port = free_ports(2)

    def start(self) -> None:
        _as_postgres(PG_BIN / "initdb", "-D", self.primary, "-U", "postgres", "--auth=trust", "--no-sync")
        with (self.primary / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {self.primary_port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                       f"synchronous_standby_names = '{STANDBY}'\n")
        self._ctl("start", self.primary)
        _as_postgres(PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", self.primary_port, "-U", "postgres",
                     "-D", self.standby, "-R", "--no-sync")
        with (self.standby / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {self.standby_port}\nprimary_conninfo = 'host=127.0.0.1 port={self.primary_port} "
                       f"user=postgres application_name={STANDBY}'\n")
        self._ctl("start", self.standby)
        _as_postgres(PG_BIN / "psql", "-h", "127.0.0.1", "-p", self.primary_port, "-U", "postgres",
                     "-c", "CREATE DATABASE presence")

    def _ctl(self, action: str, data: Path, *extra: str) -> None:
        _as_postgres(PG_BIN / "pg_ctl", action, "-D", data, "-w", "-l", data.parent / f"{data.name}.log", *extra)

    def sql(self, statement: str) -> None:
        _as_postgres(PG_BIN / "psql", "-h", "127.0.0.1", "-p", self.primary_port, "-U", "postgres",
                     "-c", statement)

    def stop_standby(self) -> None:
        self._ctl("stop", self.standby, "-m", "immediate")

    def stop_all(self) -> None:
        for data in (self.standby, self.primary):
            if (data / "postmaster.pid").exists():
                subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "stop", "-D", str(data),
                                "-m", "immediate"], capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/presence"


@pytest.fixture
def streaming():
    root = Path(tempfile.mkdtemp(prefix="pha-dbrepl-"))
    entry = pwd.getpwnam("postgres")
    os.chown(root, entry.pw_uid, entry.pw_gid)
    pair = Pair(root)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _report(cli: Cli, command: str) -> tuple[int, dict]:
    result = cli("dbreplication", command, "--json", ok=False)
    return result.exit_code, json.loads(result.output)


def _wait_for(cli: Cli, check, what: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        code, report = _report(cli, "runtimestate")
        if check(report):
            return {"code": code, **report}
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout_s:.0f}s: {report}")
        time.sleep(0.2)


def test_value_follows_the_real_standby(streaming):
    cli = Cli(streaming.url)
    cli("db", "upgrade")
    provision_pairs(cli)

    report = _wait_for(cli, lambda r: r["setup_value"] == 2, "synchronous standby")
    assert report["code"] == 0 and report["healthy"] and report["fault"] is None
    (standby,) = report["standbys"]
    assert (standby["name"], standby["client_addr"], standby["state"], standby["sync_state"]) == (
        STANDBY, "127.0.0.1", "streaming", "sync")
    assert isinstance(standby["lag_bytes"], int) and standby["lag_bytes"] >= 0
    assert standby["replay_lsn"] and standby["sent_lsn"]
    assert {n["node"]: n["setup_value"] for n in report["nodes"]} == {"a1": 2, "a2": 2, "b1": 2, "b2": 2}
    human = cli("dbreplication", "status").output
    assert "replication setup: 2 (healthy)" in human and "verdict: healthy" in human
    line = next(line for line in human.splitlines() if line.startswith(STANDBY))
    assert line.split()[1:4] == ["127.0.0.1", "streaming", "sync"], human
    runtime = cli("dbreplication", "runtimestate").output.splitlines()
    assert any(line.split()[:2] == ["a1", "2"] for line in runtime), runtime

    streaming.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
    streaming.sql("SELECT pg_reload_conf()")
    report = _wait_for(cli, lambda r: r["setup_value"] == 1, "asynchronous standby")
    assert report["code"] == 1 and report["standbys"][0]["sync_state"] == "async"
    assert report["fault"] is None  # asynchronous is not broken: HA may still be enabled
    assert "none synchronously" in report["summary"]

    streaming.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY}'")
    streaming.sql("SELECT pg_reload_conf()")
    _wait_for(cli, lambda r: r["setup_value"] == 2, "synchronous standby again")

    streaming.stop_standby()
    report = _wait_for(cli, lambda r: r["setup_value"] == 0, "standby gone")
    assert report["standbys"] == [] and report["code"] == 1
    result = cli("dbreplication", "status", ok=False)
    assert result.exit_code == 1
    assert "standbys: none attached" in result.output and "replication setup: 0 (no replication)" in result.output
