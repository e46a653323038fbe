"""A real HA pair for the admin and SPEC §6 row tests: two node processes, real faults.

Rules of this module (the harness; its own tests are at the end):
- `HaPair` provisions the database through the real CLI (group g1 of n1 and n2, HA
  on, alice assigned to n1 and bob to n2, short SRM timers), then spawns both nodes
  at once (a node started alone would, correctly, take its silent peer's users).
- On PostgreSQL each node reaches the database through its own `FaultProxy`, so one
  node can lose the database while the other keeps it (SPEC §6 rows 13, 22).
- The group's pair is read with `presence-ha ha status --json` (in-process CLI);
  waiting is polling with deadlines. `timeline()` folds the HA event log
  (`db.srm_state.list_events`) into the sequence of pairs the group went through.
- Slow or failing user moves are real database behaviour, installed as triggers on
  `users.active_node_id`: PostgreSQL sleeps (`pg_sleep`) or drops the mover's own
  connection (`pg_terminate_backend`); SQLite burns CPU in a recursive query or hits
  a missing table. Either way the move transaction is slow or fails, nothing else.
- `close()` stops and reaps every process and proxy (fixture finalizers call it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from presence_ha.db import srm_state, users
from presence_ha.db.engine import make_engine, make_session_factory
from tests.integration.cluster import DOMAIN, NodeProcess, cli, cluster_secret, free_ports, poll_until
from tests.integration.faultproxy import FaultProxy

NAMES = ("n1", "n2")
USERS = {"alice": "n1", "bob": "n2"}
FAST_SRM = {
    "heartbeat_interval_s": 1, "heartbeat_timeout_s": 6, "init_heartbeat_timeout_s": 4,
    "critical_service_delay_s": 1,
}
SLOW_MOVE_S = 2.0  # < heartbeat_timeout_s: a mover's SRM is busy for that long
NORMAL = ("Normal", "Normal")
STATE_DEADLINE_S = 30.0
MOVE_TRIGGER = "pha_test_move_fault"


def is_postgres(db_url: str) -> bool:
    return db_url.startswith("postgres")


async def _run_sql(db_url: str, *statements: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def run_sql(db_url: str, *statements: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callable from async tests too
        pool.submit(asyncio.run, _run_sql(db_url, *statements)).result()


async def _db_read(db_url: str, reader):
    engine = make_engine(db_url)
    try:
        async with make_session_factory(engine)() as session:
            return await reader(session)
    finally:
        await engine.dispose()


def db_read(db_url: str, reader):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _db_read(db_url, reader)).result()


def _sqlite_burn(rows: int) -> str:
    return f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) SELECT count(*) FROM c"


@functools.cache
def sqlite_rows_per_s() -> float:
    """How fast this machine's SQLite runs `_sqlite_burn` (to size a slow move in seconds)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        start = time.perf_counter()
        conn.execute(_sqlite_burn(300_000)).fetchall()
        return 300_000 / max(time.perf_counter() - start, 1e-3)


class PairNode(NodeProcess):
    """A node process that is ready once its admin RPC listens: the admin server opens
    after the SRM started, and an Idle or Initializing node has no client listener."""

    admin_port: int = 0

    def _accepting(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"node {self.name} exited early:\n{self.log()}")
        try:
            with socket.create_connection((self.host, self.admin_port), timeout=0.5):
                return True
        except OSError:
            return False


class HaPair:
    def __init__(self, db_url: str, tmp_path: Path, params: dict[str, object] | None = None) -> None:
        self.db_url = db_url
        self.dir = tmp_path / "pair"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.params = {**FAST_SRM, **(params or {})}
        self.ports = {name: free_ports(5) for name in NAMES}
        self.proxies: dict[str, FaultProxy] = {}
        self.nodes: dict[str, NodeProcess] = {}

    # --- lifecycle ---------------------------------------------------------------------

    def provision(self) -> None:
        url = self.db_url
        cli(url, "db", "upgrade")
        cli(url, "cluster", "init", "--name", "test", "--domain", DOMAIN)
        flags = ("--client-port", "--srm-port", "--admin-port", "--link-port", "--metrics-port")
        for name in NAMES:
            ports = map(str, self.ports[name])
            cli(url, "node", "add", name, *[x for pair in zip(flags, ports, strict=True) for x in pair])
        cli(url, "group", "add", "g1", "--node", "n1", "--node", "n2")
        cli(url, "param", "set", "user_assignment_mode", "None")
        for key, value in self.params.items():
            cli(url, "param", "set", key, str(value).lower() if isinstance(value, bool) else str(value))
        (self.dir / "users.csv").write_text("".join(f"{u},{u}-pw\n" for u in USERS))
        cli(url, "user", "import", str(self.dir / "users.csv"))
        for username, node in USERS.items():
            cli(url, "user", "assign", username, node)
        cli(url, "group", "edit", "g1", "--ha", "on")

    def node_db_url(self, name: str) -> str:
        """The URL node `name` uses: on PostgreSQL, through its own fault proxy."""
        if not is_postgres(self.db_url):
            return self.db_url
        url = make_url(self.db_url)
        proxy = self.proxies.get(name)
        if proxy is None:
            proxy = self.proxies[name] = FaultProxy(url.host or "127.0.0.1", url.port or 5432).start()
        return url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    def start(self, *names: str) -> None:
        """Spawn the named nodes (default both) together; wait until each accepts clients."""
        procs = []
        for name in names or NAMES:
            ports = self.ports[name]
            proc = PairNode(name, ports[0], ports[4], self.dir, self.node_db_url(name), ())
            proc.admin_port = ports[2]
            self.nodes[name] = proc
            procs.append(proc)
        with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(lambda p: p.start(), procs))

    def close(self) -> None:
        for proc in self.nodes.values():
            if proc.alive():
                os.kill(proc.process.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        for proc in self.nodes.values():
            proc.stop()
        for proxy in self.proxies.values():
            proxy.close()

    # --- observing -----------------------------------------------------------------------

    def status(self, *, offline: bool = False) -> dict[str, dict]:
        data = json.loads(cli(self.db_url, "ha", "status", "--json", *(["--offline"] if offline else [])))
        (group,) = data["groups"]
        return {node["name"]: node for node in group["nodes"]}

    def pair(self, *, offline: bool = False) -> dict[str, tuple[str, str]]:
        return {name: (n["state"], n["reason"]) for name, n in self.status(offline=offline).items()}

    def wait_for(self, expected: dict[str, tuple[str, str]], deadline_s: float = STATE_DEADLINE_S,
                 *, stored: bool = False) -> None:
        """Poll `ha status --json` until the named nodes show exactly `expected` (their
        live states; with `stored`, the states in the database, as a restart finds them)."""
        seen: list = []

        def reached() -> bool:
            pair = self.pair(offline=stored)
            seen[:] = [pair]
            return all(pair[name] == want for name, want in expected.items())

        try:
            poll_until(reached, deadline_s, f"pair {expected}", interval_s=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last seen {seen}\n{self.logs_tail()}") from None

    def wait_normal(self, deadline_s: float = STATE_DEADLINE_S) -> None:
        """Normal / Normal on both nodes, and every user served by its assigned node."""
        self.wait_for({"n1": NORMAL, "n2": NORMAL}, deadline_s)
        poll_until(self.users_home, 10, "every user active on its assigned node")

    def users_home(self) -> bool:
        listed = db_read(self.db_url, users.list_users)
        return all(u.active_node == u.assigned_node for u in listed)

    def active_nodes(self) -> dict[str, str | None]:
        return {u.username: u.active_node for u in db_read(self.db_url, users.list_users)}

    def event_mark(self) -> int:
        return len(db_read(self.db_url, lambda s: srm_state.list_events(s, limit=100_000)))

    def timeline(self, since: int) -> list[dict[str, tuple[str, str]]]:
        """The pairs the group went through after `event_mark()` returned `since`."""
        events = list(reversed(db_read(self.db_url, lambda s: srm_state.list_events(s, limit=100_000))))
        pair = dict.fromkeys(NAMES, NORMAL)
        for event in events[:since]:
            pair[event.node] = (event.to_state, event.reason)
        seen = [dict(pair)]
        for event in events[since:]:
            pair[event.node] = (event.to_state, event.reason)
            seen.append(dict(pair))
        return seen

    def logs_tail(self, lines: int = 25) -> str:
        return "\n".join(f"--- {n}.log\n" + "\n".join(p.log().splitlines()[-lines:]) for n, p in self.nodes.items())

    # --- faults and admin actions --------------------------------------------------------

    def admin(self, *args: str) -> str:
        return cli(self.db_url, *args)

    def send(self, name: str, sig: int) -> None:
        os.kill(self.nodes[name].process.pid, sig)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """End node `name` with `sig` and reap it."""
        proc = self.nodes[name]
        proc.process.send_signal(sig)
        proc.process.wait(timeout=30)

    def restart_srm(self, name: str) -> None:
        """Restart only node `name`'s SRM (the Recovery operation on one node)."""
        from presence_ha.server.net.admin_rpc import admin_token, call_node  # the same client as the CLI

        secret = cluster_secret(self.db_url)
        asyncio.run(call_node("127.0.0.1", self.ports[name][2], admin_token(secret), {"op": "recover", "node": name}))

    def cut_database(self, name: str) -> None:
        self.proxies[name].cut()

    def heal_database(self, name: str) -> None:
        self.proxies[name].heal()

    def slow_moves(self, seconds: float = SLOW_MOVE_S) -> None:
        """Every user move takes about `seconds` more inside its transaction. Keep it
        under the heartbeat timeout: the mover's SRM sends no heartbeat meanwhile."""
        if is_postgres(self.db_url):
            self._move_trigger(f"PERFORM pg_sleep({seconds});")
        else:
            self._move_trigger(_sqlite_burn(int(sqlite_rows_per_s() * seconds)) + ";")

    def fail_moves(self) -> None:
        """Every user move fails: the mover loses its database connection (or, on
        SQLite, the statement fails as an operational error)."""
        if is_postgres(self.db_url):
            self._move_trigger("PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);")
        else:
            self._move_trigger("SELECT count(*) FROM pha_test_no_such_table;")

    def normal_moves(self) -> None:
        if is_postgres(self.db_url):
            run_sql(self.db_url, f"DROP TRIGGER IF EXISTS {MOVE_TRIGGER} ON users",
                    f"DROP FUNCTION IF EXISTS {MOVE_TRIGGER}()")
        else:
            run_sql(self.db_url, f"DROP TRIGGER IF EXISTS {MOVE_TRIGGER}")

    def _move_trigger(self, body: str) -> None:
        self.normal_moves()
        if is_postgres(self.db_url):
            run_sql(
                self.db_url,
                f"CREATE FUNCTION {MOVE_TRIGGER}() RETURNS trigger LANGUAGE plpgsql "
                f"AS $$ BEGIN {body} RETURN NULL; END $$",
                f"CREATE TRIGGER {MOVE_TRIGGER} BEFORE UPDATE OF active_node_id ON users "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {MOVE_TRIGGER}()",
            )
        else:
            run_sql(self.db_url,
                    f"CREATE TRIGGER {MOVE_TRIGGER} BEFORE UPDATE OF active_node_id ON users BEGIN {body} END")


def start_pair(db_url: str, tmp_path: Path, params: dict[str, object] | None = None) -> HaPair:
    pair = HaPair(db_url, tmp_path, params)
    try:
        pair.provision()
        pair.start()
        pair.wait_normal()
    except BaseException:
        pair.close()
        raise
    return pair


def wait_seconds(seconds: float) -> None:
    """Let a timer that must NOT fire have its chance (a deadline, not a sync point)."""
    end = time.monotonic() + seconds
    poll_until(lambda: time.monotonic() >= end, seconds + 1, "time to pass")
