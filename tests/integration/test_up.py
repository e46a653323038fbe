"""`presence-ha up` supervises its nodes (issue: an `up` that survives its nodes), and
standard clients of users on both nodes reach them through any address.

Scenario: `up` runs a pair on SQLite behind its service address (HAProxy, both nodes
UP, one cluster CA trusted for all); node2 is killed with SIGKILL. `up` says so and keeps running, HAProxy takes node2
out of the rotation (the service address keeps answering with stream features), node1
keeps accepting clients and takes node2's users over; after the
restart delay node2 is started again and comes back Failed Over (SPEC §6 rows 17-18),
waiting for the admin's fallback. Ctrl-C (SIGINT) then stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import slixmpp

from presence_ha.server.cli.haproxy import server_states, stream_header
from tests.integration.cluster import _bindable, cli, node_argv

DEADLINE_S = 60.0


def free_block(size: int = 20) -> int:
    """A base port whose next `size` ports are all free, below the ephemeral range."""
    start = 20_000 + (os.getpid() * 37) % 10_000
    for base in range(start, 31_000, size):
        if all(_bindable(p) for p in range(base, base + size)):
            return base
    raise RuntimeError("no free block of ports")


def wait_until(check: Callable[[], object], what: str, deadline_s: float = DEADLINE_S) -> object:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def children(pid: int) -> dict[str, int]:
    """`{node name: pid}` of `up`'s node processes."""
    found: dict[str, int] = {}
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for kid in kids:
        try:
            argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--name" in argv:
            found[argv[argv.index(b"--name") + 1].decode()] = int(kid)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@contextlib.contextmanager
def running_up(directory: Path, restart_delay_s: float, users: int = 4, restart_max_delay_s: float | None = None,
               extra: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`presence-ha up` on free ports with its output in `directory/up.out`, once it
    welcomes clients; at the end Ctrl-C, then SIGKILL for any node process left behind."""
    out = directory / "up.out"
    base = free_block()
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            node_argv("up", "--data-dir", str(directory), "--base-port", str(base), "--users", str(users),
                      "--restart-delay", str(restart_delay_s),
                      *(("--restart-max-delay", str(restart_max_delay_s)) if restart_max_delay_s else ()),
                      "--service-port", str(base + 19), *extra),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[int] = set()
    try:
        wait_until(lambda: "Connect any XMPP client" in out.read_text() or process.poll() is not None, "up's welcome")
        seen.update(children(process.pid).values())  # reaped below even if `up` itself dies
        yield process, out
    finally:
        seen.update(children(process.pid).values())
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    with running_up(tmp_path, 1) as (process, out):
        yield process, tmp_path, out


def features(port: int) -> bool:
    """Whether `port` answers an XMPP stream header with stream features (RFC 6120 §4.3.2)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(stream_header("localhost").encode())
            seen = b""
            while b"<stream:features" not in seen:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                seen += chunk
            return True
    except OSError:
        return False


def starttls_verified(port: int, cafile: Path, domain: str = "localhost") -> str:
    """STARTTLS on `port`, verifying the certificate for `domain` against `cafile` only;
    returns the certificate's serial number (raises if the client would refuse it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(stream_header(domain).encode())
        seen = b""
        while b"</stream:features>" not in seen:
            seen += sock.recv(4096)
        sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        while b"<proceed" not in seen:
            seen += sock.recv(4096)
        context = ssl.create_default_context(cafile=str(cafile))
        with context.wrap_socket(sock, server_hostname=domain) as tls:
            cert = tls.getpeercert()
            assert cert is not None
            return str(cert["serialNumber"])


def haproxy_status(directory: Path) -> dict[str, str]:
    return server_states(directory / "haproxy.sock")


def wait_states(db_url: str, expected: dict[str, str]) -> None:
    def reached() -> bool:
        status = json.loads(cli(db_url, "ha", "status", "--json"))
        return {n["name"]: n["state"] for g in status["groups"] for n in g["nodes"]} == expected

    wait_until(reached, f"the states {expected}")


def test_a_killed_node_is_restarted_and_the_other_keeps_serving(up: tuple[subprocess.Popen, Path, Path]) -> None:
    process, directory, out = up
    wait_until(lambda: "Connect any XMPP client" in out.read_text(), "up's welcome")
    spec = json.loads((directory / "cluster.json").read_text())
    port = {n["name"]: n["client_port"] for n in spec["nodes"]}
    wait_until(lambda: "re-login limits: 5-15 s (demo values set by `up`" in out.read_text(), "the demo limits")
    metrics = {n["name"]: n["metrics_port"] for n in spec["nodes"]}
    assert f"metrics http://127.0.0.1:{metrics['node1']}/metrics" in out.read_text()
    pids = wait_until(lambda: (c := children(process.pid)) and len(c) == 2 and c, "two node processes")
    assert isinstance(pids, dict)
    wait_states(spec["database_url"], {"node1": "Normal", "node2": "Normal"})
    # Each node persists its state before it reports it to the peer (STYLE §3): give
    # node2's last report the moment it needs to reach node1, as it would in any real
    # run, so that the kill tests supervision and not that window.
    time.sleep(1.0)

    service = spec["service"]["port"]
    banner = out.read_text().split("service address: ", 1)[1]  # after the start-up progress
    assert banner.startswith(f"127.0.0.1:{service}")
    wait_until(lambda: haproxy_status(directory) == {"node1": "UP", "node2": "UP"}, "both nodes UP in HAProxy")
    assert features(service)
    ca = directory / "tls" / "ca.crt"  # one CA for the cluster: both nodes and the service address verify
    serials = {starttls_verified(port["node1"], ca), starttls_verified(port["node2"], ca)}
    assert len(serials) == 2 and starttls_verified(service, ca) in serials

    os.kill(pids["node2"], signal.SIGKILL)
    wait_until(lambda: "node node2 died (killed by SIGKILL)" in out.read_text(), "up reporting the death")
    assert process.poll() is None, out.read_text()
    assert accepts(port["node1"]) and alive(pids["node1"])
    wait_until(lambda: haproxy_status(directory)["node2"].startswith("DOWN"), "HAProxy marking node2 down", 10)
    assert all(features(service) for _ in range(10)), "the service address led a client to the dead node"

    wait_until(lambda: "node node2 restarted" in out.read_text(), "the restart")
    wait_until(lambda: accepts(port["node2"]), "node2 accepting clients again")
    restarted = children(process.pid)["node2"]
    assert restarted != pids["node2"]

    wait_states(spec["database_url"], {"node1": "Running in Backup Mode", "node2": "Failed Over"})
    assert alive(pids["node1"]), "node1 must never have been stopped"

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0 or process.returncode is not None
    wait_until(lambda: not alive(pids["node1"]) and not alive(restarted), "every node stopped after Ctrl-C", 20)
    assert "stopping nodes" in out.read_text()


def test_up_help_names_the_restart_delay() -> None:
    result = subprocess.run(node_argv("up", "--help"), capture_output=True, text=True, timeout=60)
    text = " ".join(result.stdout.split())
    assert "--restart-delay" in text and "Failed Over" in text


class Chatty(slixmpp.ClientXMPP):
    """A standard slixmpp client that trusts only the cluster CA and records messages."""

    def __init__(self, jid: str, password: str, cafile: Path) -> None:
        super().__init__(jid, password)
        self.ssl_context = ssl.create_default_context(cafile=str(cafile))  # verified, for the domain
        self.ready = asyncio.Event()
        self.bodies: list[str] = []
        self.online: set[str] = set()  # contacts whose available presence came in
        self.add_event_handler("session_start", lambda _e: (self.send_presence(), self.ready.set()))
        self.add_event_handler("message", lambda m: self.bodies.append(str(m["body"])))
        self.add_event_handler("presence_available", lambda p: self.online.add(p["from"].bare))


async def _exchange(users: list[dict[str, str]], ports: list[int], cafile: Path) -> None:
    """Every user logs in through every port (the service address and each node, its
    pair peer included) with a verified certificate, and every one gets a message."""
    for port in ports:
        clients = [Chatty(u["jid"], u["password"], cafile) for u in users]
        try:
            for client in clients:
                client.connect(host="127.0.0.1", port=port)
            await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), DEADLINE_S)
            for sender, receiver in zip(clients, clients[1:] + clients[:1], strict=True):
                sender.send_message(mto=receiver.boundjid.bare, mbody=f"hi via {port} from {sender.boundjid.user}")
            end = time.monotonic() + DEADLINE_S
            while not all(len(c.bodies) >= 1 for c in clients):
                assert time.monotonic() < end, f"via {port}: {[c.bodies for c in clients]}"
                await asyncio.sleep(0.05)
            # the demo users are each other's contacts (subscription both): presence without asking
            everyone = {u["jid"] for u in users}
            while not all(everyone - {c.boundjid.bare} <= c.online for c in clients):
                assert time.monotonic() < end, f"via {port}: {[sorted(c.online) for c in clients]}"
                await asyncio.sleep(0.05)
        finally:
            for client in clients:
                client.disconnect()
            await asyncio.sleep(0.2)


def test_standard_clients_of_both_nodes_dial_any_address(up: tuple[subprocess.Popen, Path, Path]) -> None:
    _process, directory, out = up
    wait_until(lambda: "Connect any XMPP client" in out.read_text(), "up's welcome")
    spec = json.loads((directory / "cluster.json").read_text())
    wait_states(spec["database_url"], {"node1": "Normal", "node2": "Normal"})
    ports = [spec["service"]["port"], *(n["client_port"] for n in spec["nodes"])]
    asyncio.run(_exchange(spec["users"], ports, directory / "tls" / "ca.crt"))
    logs = (directory / "node1.log").read_text() + (directory / "node2.log").read_text()
    assert "see-other-host" not in logs
    assert "without <hold/>: relayed to node1" in logs and "without <hold/>: relayed to node2" in logs


def running_in(directory: Path) -> list[int]:
    """Pids of live processes whose command line names `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and str(directory).encode() in argv and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def up_with_a_taken_port(directory: Path, taken_offset: int) -> tuple[subprocess.CompletedProcess[str], float]:
    """`up` on free ports except one (base + `taken_offset`), which another socket holds."""
    base = free_block()
    holder = socket.create_server(("127.0.0.1", base + taken_offset))  # listens: connections to it succeed
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            node_argv("up", "--data-dir", str(directory), "--base-port", str(base), "--users", "2",
                      "--service-port", str(base + 19)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = process.communicate(timeout=45)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return subprocess.CompletedProcess(process.args, process.returncode, out, err), time.monotonic() - started
    finally:
        holder.close()


@pytest.mark.parametrize(("offset", "cause"), [
    (10, "node node2 could not start (exit status 1): cannot start xcp-router on 127.0.0.1"),  # node2's client port
    (2, "node node1 could not start (exit status 1): cannot listen on 127.0.0.1:"),  # node1's admin port
])
def test_up_with_a_busy_node_port_exits_non_zero_with_the_nodes_error(tmp_path: Path, offset: int, cause: str) -> None:
    result, seconds = up_with_a_taken_port(tmp_path, offset)
    assert result.returncode != 0 and seconds < 30, (seconds, result.stdout, result.stderr)
    assert cause in result.stderr and "address already in use" in result.stderr, result.stderr
    assert "Connect any XMPP client" not in result.stdout  # no banner for a cluster that is not there
    assert not (tmp_path / "cluster.json").exists()
    assert not running_in(tmp_path)  # the node that did start was stopped


def test_up_with_a_busy_service_port_says_so(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.skip("no haproxy: up runs without a service address")
    result, seconds = up_with_a_taken_port(tmp_path, 19)
    assert result.returncode != 0 and seconds < 30, (seconds, result.stdout, result.stderr)
    assert "the service address 127.0.0.1:" in result.stderr and "is taken" in result.stderr, result.stderr
    assert "Connect any XMPP client" not in result.stdout
