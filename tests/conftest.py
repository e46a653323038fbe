"""Shared fixtures: a fresh real database per test, on SQLite and on PostgreSQL.

Rules:
- `db_url` is parametrized over both backends. SQLite is a temp file; PostgreSQL is a
  brand-new database on the local server, dropped afterwards.
- PostgreSQL missing: the test is skipped locally, but with CI=true it fails (the
  house rule: in CI the PostgreSQL tests must run).
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

PG_ADMIN_DSNS = (
    os.environ.get("PRESENCE_HA_TEST_PG", ""),
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _pg_admin_connect():
    import asyncpg

    last: Exception | None = None
    for dsn in filter(None, PG_ADMIN_DSNS):
        try:
            return await asyncpg.connect(dsn, timeout=5), dsn
        except (OSError, asyncpg.PostgresError) as exc:
            last = exc
    raise ConnectionError(f"PostgreSQL not reachable: {last}")


async def _pg_create() -> str:
    conn, dsn = await _pg_admin_connect()
    name = f"pha_test_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


async def _pg_drop(url: str) -> None:
    conn, _ = await _pg_admin_connect()
    name = url.rsplit("/", 1)[1]
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _new_postgres_url() -> str:
    try:
        return asyncio.run(_pg_create())
    except ConnectionError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'presence-ha.sqlite3'}"


@pytest.fixture
def postgres_url():
    url = _new_postgres_url()
    yield url
    asyncio.run(_pg_drop(url))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty database URL (no schema yet), on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'presence-ha.sqlite3'}"
        return
    url = _new_postgres_url()
    yield url
    asyncio.run(_pg_drop(url))


# --- leftover processes -------------------------------------------------------------
# A test module that starts processes must end them, even when it fails. In a run
# without xdist workers (the serial phase of `make test`), each module's new processes
# of these programs are looked for once the module is done: a survivor is reported and
# killed, so that it neither skews a later test's timing nor keeps a port. Only processes
# that inherited this run's marker from the environment count (not another run's nodes).
_MARK = "PRESENCE_HA_TEST_RUN"
os.environ.setdefault(_MARK, str(os.getpid()))
_WATCHED = ("presence-ha", "haproxy", "prosody", "profanity", "go-sendxmpp", "patroni", "etcd", "ejabberd")


def _watched_pids(mark: str | None = None) -> dict[int, str]:
    """Running processes of the watched programs started under this run's marker (or,
    with `mark`, under that marker value)."""
    want = f"{_MARK}={mark if mark is not None else os.environ[_MARK]}".encode()
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if not any(w in cmdline for w in _WATCHED) or "pytest" in cmdline:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                ours = want in f.read().split(b"\0")
        except OSError:
            continue
        if ours:
            found[int(entry.name)] = cmdline
    return found


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_processes(request):
    if os.environ.get("PYTEST_XDIST_WORKER") or not os.path.isdir("/proc"):
        yield
        return
    before = _watched_pids()
    yield
    import contextlib
    import signal
    import time
    import warnings

    deadline = time.monotonic() + 3.0
    left = {p: c for p, c in _watched_pids().items() if p not in before}
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {p: c for p, c in _watched_pids().items() if p not in before}
    for pid, cmdline in left.items():
        warnings.warn(f"{request.module.__name__} left process {pid} running: {cmdline[:160]} (killed)", stacklevel=1)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _orphans_of_earlier_runs() -> dict[int, str]:
    """Watched processes whose test run (the pytest process named by their marker) is over."""
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                marks = [v for v in f.read().split(b"\0") if v.startswith(f"{_MARK}=".encode())]
        except OSError:
            continue
        if not marks:
            continue
        run = marks[0].split(b"=", 1)[1].decode()
        if run.isdigit() and not os.path.exists(f"/proc/{run}"):
            found.update(_watched_pids(run))
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_orphans_of_earlier_runs() -> None:
    """An earlier pytest run (the parallel phase of `make test`) that left processes behind:
    reported and killed before this run measures anything."""
    if not os.environ.get("PYTEST_XDIST_WORKER") and os.path.isdir("/proc"):
        import contextlib
        import signal
        import warnings

        for pid, cmdline in _orphans_of_earlier_runs().items():
            warnings.warn(f"an earlier test run left process {pid} running: {cmdline[:160]} (killed)", stacklevel=1)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
