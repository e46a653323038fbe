"""Real node processes for integration tests: provision, spawn, wait, stop, reap.

Rules of this module:
- `start_cluster(db_url, tmp_path, nodes=2, users=[("alice", "pw")])` provisions the
  empty database through the real CLI (`presence-ha db upgrade`, `cluster init`,
  `node add`, `group add`, `user import`, `user assign`, `param set`, run in-process
  with click's CliRunner), then spawns one `presence-ha node run` subprocess per
  node on free loopback ports and waits (polling, with a deadline) until each
  accepts TCP connections. Users are all served by the first node unless
  `placement={"bob": "n2"}` says otherwise.
- `Cluster.stop()` sends SIGTERM (graceful shutdown), waits, SIGKILLs what is left
  and reaps every process. Use the `cluster_factory` fixture so a finalizer always
  does it, even when the test fails.
- `RawClient` speaks raw bytes (STARTTLS, SASL PLAIN, bind) for bad-input tests.
- Waiting is polling with deadlines; there is no bare sleep.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from presence_ha.server.cli import main as cli_main

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0
DOMAIN = "example.test"
FAST_LIMITS = ("limits.auth_throttle_base_s=0.2", "limits.auth_throttle_max_s=1")


# Listening ports come from below the kernel's ephemeral range (32768+ here), so the
# clients' own outgoing connections can never take a port between its choice and the
# node's bind, and each pytest-xdist worker draws from its own slice of the range.
_PORT_LOW, _PORT_HIGH = 10_000, 32_000
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_SLICE = (_PORT_HIGH - _PORT_LOW) // 8
_next_port = _PORT_LOW + (_WORKER % 8) * _SLICE + (os.getpid() * 7) % (_SLICE // 2)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports from this worker's slice."""
    global _next_port
    base = _PORT_LOW + (_WORKER % 8) * _SLICE
    chosen: list[int] = []
    for _ in range(_SLICE):
        port, _next_port = _next_port, _next_port + 1
        if _next_port >= base + _SLICE:
            _next_port = base
        if _bindable(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free ports in {base}..{base + _SLICE}")


def poll_until(predicate: Callable[[], bool], deadline_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval_s)


async def wait_until(predicate: Callable[[], bool], deadline_s: float, what: str, interval_s: float = 0.05) -> None:
    """`poll_until` for async tests: the event loop keeps running between polls."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def cli(db_url: str, *args: str) -> str:
    """Run `presence-ha ARGS --db URL` in-process; return its output, fail loudly.

    It runs on a worker thread, so async tests (whose loop is running) can call it too.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(CliRunner().invoke, cli_main, [*args, "--db", db_url]).result()
    if result.exit_code != 0:
        raise AssertionError(f"presence-ha {' '.join(args)} failed ({result.exit_code}): {result.output}")
    return result.output


def node_argv(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("presence-ha")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from presence_ha.server.cli import main; main()", *args]


@dataclass
class NodeProcess:
    name: str
    client_port: int
    metrics_port: int
    data_dir: Path
    db_url: str
    sets: tuple[str, ...]
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        argv = node_argv("-v", "node", "run", "--name", self.name, "--db", self.db_url,
                         "--data-dir", str(self.data_dir))
        for item in self.sets:
            argv += ["--set", item]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=os.environ.copy())
        try:
            poll_until(self._accepting, START_DEADLINE_S, f"node {self.name} on port {self.client_port}")
        except TimeoutError:
            self.stop()
            raise AssertionError(f"node {self.name} did not start:\n{self.log()}") from None

    def _accepting(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"node {self.name} exited early:\n{self.log()}")
        try:
            with socket.create_connection((self.host, self.client_port), timeout=0.5):
                return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the node, wait for it (SIGKILL after the deadline), reap it."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def metrics(self) -> dict[str, float]:
        """The node's metrics as {'name{labels}': value} (from its HTTP endpoint)."""
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")
        }


@dataclass
class Cluster:
    db_url: str
    domain: str
    data_dir: Path
    nodes: dict[str, NodeProcess]
    users: dict[str, str] = field(default_factory=dict)  # username -> password

    def node(self, name: str) -> NodeProcess:
        return self.nodes[name]

    def jid(self, username: str) -> str:
        return f"{username}@{self.domain}"

    def cli(self, *args: str) -> str:
        return cli(self.db_url, *args)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.alive():
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            node.stop()


def _provision(db_url: str, names: list[str], ports: dict[str, Any], users, placement, params) -> None:
    cli(db_url, "db", "upgrade")
    cli(db_url, "cluster", "init", "--name", "test", "--domain", DOMAIN)
    flags = ("--client-port", "--srm-port", "--admin-port", "--link-port", "--metrics-port")
    for name in names:
        cli(db_url, "node", "add", name, *[x for pair in zip(flags, map(str, ports[name]), strict=True) for x in pair])
    cli(db_url, "group", "add", "g1", *[x for name in names for x in ("--node", name)])
    cli(db_url, "param", "set", "user_assignment_mode", "None")
    for key, value in params.items():
        cli(db_url, "param", "set", key, str(value))
    if users:
        csv_path = Path(ports["_dir"]) / "users.csv"
        csv_path.write_text("".join(f"{u},{p}\n" for u, p in users))
        cli(db_url, "user", "import", str(csv_path))
    for username, _ in users:
        cli(db_url, "user", "assign", username, placement.get(username, names[0]))


def start_cluster(
    db_url: str,
    tmp_path: Path,
    nodes: int = 2,
    users: Sequence[tuple[str, str]] = (("alice", "alice-pw"), ("bob", "bob-pw")),
    placement: dict[str, str] | None = None,
    params: dict[str, object] | None = None,
    sets: tuple[str, ...] = FAST_LIMITS,
) -> Cluster:
    """Provision `db_url` and run `nodes` node processes named n1, n2..."""
    names = [f"n{i}" for i in range(1, nodes + 1)]
    data_dir = tmp_path / "cluster"
    data_dir.mkdir(parents=True, exist_ok=True)
    ports: dict = {name: free_ports(5) for name in names}
    ports["_dir"] = str(data_dir)
    _provision(db_url, names, ports, list(users), placement or {}, params or {})
    procs = {
        name: NodeProcess(name, ports[name][0], ports[name][4], data_dir, db_url, tuple(sets)) for name in names
    }
    cluster = Cluster(db_url, DOMAIN, data_dir, procs, dict(users))
    try:
        for proc in procs.values():
            proc.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def cluster_factory(db_url, tmp_path) -> Iterator[Callable[..., Cluster]]:
    """`cluster_factory(nodes=2, users=[...], ...)`: clusters stopped and reaped at teardown."""
    started: list[Cluster] = []

    def factory(**kwargs) -> Cluster:
        cluster = start_cluster(db_url, tmp_path / f"c{len(started)}", **kwargs)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        cluster.stop()


class RawClient:
    """A byte-level XMPP client for bad-input tests (asyncio streams, TLS without checks)."""

    HEADER = (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        " to='{domain}' version='1.0'>"
    )

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str) -> None:
        self.reader, self.writer, self.domain = reader, writer, domain
        self.buffer = ""

    @classmethod
    async def connect(cls, node: NodeProcess, domain: str = DOMAIN) -> RawClient:
        reader, writer = await asyncio.open_connection(node.host, node.client_port)
        return cls(reader, writer, domain)

    async def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def expect(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Read until `pattern` (a regex) matches the unread text; consume up to the match."""
        deadline = time.monotonic() + timeout
        while (match := re.search(pattern, self.buffer, re.S)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {pattern!r} in {self.buffer[-2000:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                raise ConnectionError(f"closed before {pattern!r}; got {self.buffer[-2000:]!r}")
            self.buffer += chunk.decode(errors="replace")
        self.buffer = self.buffer[match.end():]
        return match

    async def closed(self, timeout: float = 10.0) -> bool:
        """True once the server closed the TCP connection (EOF), within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), deadline - time.monotonic())
            except (TimeoutError, ConnectionError, ssl.SSLError):
                return isinstance(self.reader.exception(), ConnectionError) or self.reader.at_eof()
            if not chunk:
                return True
            self.buffer += chunk.decode(errors="replace")
        return False

    async def open_stream(self) -> None:
        await self.send(self.HEADER.format(domain=self.domain))
        await self.expect(r"</stream:features>")

    async def starttls(self) -> None:
        await self.open_stream()
        await self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.expect(r"<proceed[^>]*/>")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        await self.writer.start_tls(context)
        await self.open_stream()

    async def auth_plain(self, username: str, password: str) -> str:
        """Send PLAIN credentials; return 'success' or the failure condition."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        await self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        match = await self.expect(r"<success[^>]*?(?:/>|>[^<]*</success>)|<failure[^>]*><([a-z-]+)")
        return "success" if match.group(0).startswith("<success") else match.group(1)

    async def login(self, username: str, password: str, resource: str = "raw") -> None:
        """STARTTLS, PLAIN, restart, bind: a bound session."""
        await self.starttls()
        assert await self.auth_plain(username, password) == "success"
        await self.open_stream()
        await self.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                        f"<resource>{resource}</resource></bind></iq>")
        await self.expect(r"<iq [^>]*id='bind'[^>]*>.*?</iq>")

    async def stream_error(self, timeout: float = 10.0) -> str:
        """The condition of the `<stream:error/>` the server sends."""
        match = await self.expect(r"<stream:error><([a-z-]+)", timeout)
        return match.group(1)

    def close(self) -> None:
        self.writer.transport.abort()


async def slix_login(cluster: Cluster, username: str, *, mechanism: str | None = None, node: str = "n1",
                     resource: str | None = None, plugins: tuple[str, ...] = ("xep_0030", "xep_0199"),
                     timeout: float = 15.0):
    """A real slixmpp client with a bound session on `node` (TLS unverified: self-signed)."""
    import slixmpp

    jid = cluster.jid(username) + (f"/{resource}" if resource else "")
    client = slixmpp.ClientXMPP(jid, cluster.users[username], sasl_mech=mechanism)
    for plugin in plugins:
        client.register_plugin(plugin)
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    started = asyncio.get_running_loop().create_future()

    def finish(outcome):
        if not started.done():
            started.set_result(outcome)

    client.add_event_handler("session_start", lambda _e: finish("ok"))
    client.add_event_handler("failed_auth", lambda _e: finish("failed_auth"))
    client.add_event_handler("stream_error", lambda e: finish(f"stream_error:{e['condition']}"))
    client.add_event_handler("disconnected", lambda _e: finish("disconnected"))
    target = cluster.node(node)
    client.connect(target.host, target.client_port)
    outcome = await asyncio.wait_for(started, timeout)
    if outcome != "ok":
        client.disconnect()
        raise ConnectionError(f"{username} could not log in on {node}: {outcome}")
    return client


async def slix_disconnect(client, timeout: float = 10.0) -> None:
    done = client.disconnect()
    if done is not None:
        await asyncio.wait_for(done, timeout)


# --- HA pairs (SRM integration tests) ---------------------------------------------------
# An HA node in Initializing serves nobody and keeps its client port closed until it has
# heard its peer (SPEC §6), so both processes are spawned first and readiness is the
# state the SRMs persist in the database.

T = TypeVar("T")

FAST_SRM = {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 2, "init_heartbeat_timeout_s": 3,
            "critical_service_delay_s": 1}


def db_call(db_url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `await fn(session)` on a fresh engine, on a worker thread (usable from async tests)."""
    from presence_ha.db.engine import make_engine, make_session_factory

    async def go():
        engine = make_engine(db_url)
        try:
            async with make_session_factory(engine)() as session:
                return await fn(session)
        finally:
            await engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def cluster_key_of(db_url: str):
    """This test's cluster key ($PRESENCE_HA_CLUSTER_KEY, tests/integration/conftest.py)."""
    from presence_ha.server.cluster_key import ClusterKey, key_path

    return ClusterKey.load(key_path(None, None, db_url))


def cluster_secret(db_url: str) -> str:
    """The cluster secret in clear, opened with this test's cluster key."""
    from presence_ha.server import cluster_key

    key = cluster_key_of(db_url)
    return db_call(db_url, lambda session: cluster_key.cluster_secret(session, key))


def cluster_ca(db_url: str) -> tuple[str, str]:
    """The cluster CA (certificate PEM, key PEM in clear), opened with this test's cluster key."""
    from presence_ha.server import cluster_key

    key = cluster_key_of(db_url)
    return db_call(db_url, lambda session: cluster_key.cluster_ca(session, key))


def ha_states(db_url: str, names: tuple[str, ...] = ("n1", "n2")) -> dict[str, tuple[str, str] | None]:
    """{node: (state, reason)} as the SRMs persisted them."""
    from presence_ha.db import srm_state

    async def read(session):
        rows = {name: await srm_state.read_state(session, name) for name in names}
        return {name: (row.state, row.reason) if row else None for name, row in rows.items()}

    return db_call(db_url, read)


def active_nodes(db_url: str) -> dict[str, str | None]:
    """{username: active node} from the database."""
    from presence_ha.db import users

    async def read(session):
        return {u.username: u.active_node for u in await users.list_users(session)}

    return db_call(db_url, read)


def spawn_node(node: NodeProcess) -> None:
    """Start the node process without waiting for its client port."""
    argv = node_argv("-v", "node", "run", "--name", node.name, "--db", node.db_url, "--data-dir", str(node.data_dir))
    for item in node.sets:
        argv += ["--set", item]
    with open(node.log_path, "ab") as log:
        node.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env=os.environ.copy())


def start_ha_pair(
    db_url: str, tmp_path: Path, users=(("alice", "alice-pw"), ("bob", "bob-pw")), placement=None, params=None,
    sets: tuple[str, ...] = FAST_LIMITS,
) -> Cluster:
    """Two nodes n1, n2 in group g1 with HA on and fast SRM timers, both Normal."""
    names = ["n1", "n2"]
    data_dir = tmp_path / "cluster"
    data_dir.mkdir(parents=True, exist_ok=True)
    ports: dict = {name: free_ports(5) for name in names}
    ports["_dir"] = str(data_dir)
    all_params = {**FAST_SRM, "see_other_host_redirect": "true", **(params or {})}
    _provision(db_url, names, ports, list(users), placement or {}, all_params)
    cli(db_url, "group", "edit", "g1", "--ha", "on")
    procs = {name: NodeProcess(name, ports[name][0], ports[name][4], data_dir, db_url, tuple(sets)) for name in names}
    cluster = Cluster(db_url, DOMAIN, data_dir, procs, dict(users))
    try:
        for proc in procs.values():
            spawn_node(proc)
        poll_until(lambda: _both_normal(cluster), START_DEADLINE_S, "both nodes Normal", 0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _both_normal(cluster: Cluster) -> bool:
    for node in cluster.nodes.values():
        if not node.alive():
            raise AssertionError(f"node {node.name} exited:\n{node.log()}")
    return all(s == ("Normal", "Normal") for s in ha_states(cluster.db_url).values())


@pytest.fixture
def ha_pair_factory(db_url, tmp_path) -> Iterator[Callable[..., Cluster]]:
    """`ha_pair_factory(users=..., placement=...)`: HA pairs stopped and reaped at teardown."""
    started: list[Cluster] = []

    def factory(**kwargs) -> Cluster:
        cluster = start_ha_pair(db_url, tmp_path / f"ha{len(started)}", **kwargs)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        for node in cluster.nodes.values():
            if node.process is not None and node.alive():
                node.process.send_signal(signal.SIGCONT)  # a SIGSTOPped node cannot exit
        cluster.stop()
