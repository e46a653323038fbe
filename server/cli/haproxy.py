"""The cluster's one service address: Debian's HAProxy, in TCP mode, in front of the nodes.

Rules of this module:
- HAProxy, not a proxy of our own: it is the well-kept, widely deployed TCP balancer,
  its health checks and `on-marked-down shutdown-sessions` are what a client needs to
  be led away from a dead node, and Debian ships it. TLS passes through untouched:
  clients still negotiate STARTTLS with the node itself.
- The health check speaks XMPP: it opens a stream and expects `<stream:features` (or the
  login gate's `resource-constraint`: a busy node is alive). A
  node whose client port is closed (Initializing, Idle, Failed Over: SPEC §6) or that
  no longer answers is taken out of the rotation within `fall` checks, and the
  connections it still had are cut at once, so their clients reconnect (to the
  survivor) instead of waiting for a TCP timeout.
- `balance leastconn`: a client may dial any node; the node relays a session to the
  user's serving node (server.cluster.relay).
- `config_text` is pure (tested as text); `ServiceAddress` runs `haproxy -db` as a
  child process of `up`, which supervises it like a node.
- The lab runs one HAProxy in each node host behind a keepalived virtual address
  (`loadtest.lab.vip`): it also listens on the host's own address (`also_bind`; the
  virtual one needs `net.ipv4.ip_nonlocal_bind`, being elsewhere most of the time) and
  answers keepalived's check on a `monitor` address: HTTP 200 while it sees a node UP,
  503 when it sees none, nothing at all when it is dead.
"""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CHECK_INTERVAL_MS = 1000  # a dead (refusing) node is out of the rotation after fall * inter (3 s)
CHECK_FALL = 3
CHECK_RISE = 2
# A killed node refuses the check's connection at once (out after `fall` checks, about
# 3 s); a node whose event loop runs late under a burst (measured: 4 s late on the
# survivor of a 1,000-client kill on a loaded machine) must not be taken for dead: its
# sessions would be cut (shutdown-sessions) and their reconnections load it more. A
# hung node (SIGSTOP) is out after about fall * (timeout + inter) = 33 s.
CHECK_TIMEOUT = "10s"
MAX_CONNECTIONS = 50_000
CLIENT_TIMEOUT = "1h"  # XMPP streams are long-lived; clients ping (XEP-0199) well within this
MONITOR_URI = "/alive"


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int


def stream_header(domain: str) -> str:
    return (f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def max_connections(fd_limit: int) -> int:
    """What HAProxy may accept: it needs two descriptors a connection (client and node)."""
    return max(100, min(MAX_CONNECTIONS, (fd_limit - 100) // 2))


def monitor_section(address: str) -> str:
    """An HTTP frontend on `address` for a health checker (keepalived's): GET /alive is
    200 while a node is UP behind this HAProxy, 503 when none is."""
    return f"""
frontend monitor
    mode http
    bind {address}
    timeout client 5s
    monitor-uri {MONITOR_URI}
    monitor fail if {{ nbsrv(nodes) lt 1 }}
"""


def config_text(domain: str, bind_host: str, bind_port: int, backends: list[Backend], directory: Path,
                maxconn: int, also_bind: tuple[str, ...] = (), monitor: str | None = None) -> str:
    """haproxy.cfg for one cluster: one TCP frontend (on `bind_host` and the `also_bind`
    hosts, port `bind_port`), the nodes as checked servers, and optionally a `monitor`."""
    servers = "\n".join(f"    server {b.name} {b.host}:{b.port} check" for b in backends)
    binds = "\n".join(f"    bind {host}:{bind_port}" for host in (bind_host, *also_bind))
    return f"""# Written by presence-ha: the cluster's service address ({bind_host}:{bind_port}).
global
    maxconn {maxconn}
    pidfile {directory / 'haproxy.pid'}
    stats socket {directory / 'haproxy.sock'} mode 600 level admin

defaults
    mode tcp
    option dontlognull
    timeout connect 2s
    timeout client {CLIENT_TIMEOUT}
    timeout server {CLIENT_TIMEOUT}
    timeout check {CHECK_TIMEOUT}
    # A connection to a node that died before its checks caught up is retried on the
    # other node instead of failing the client: on every retry (`redispatch 1`), since
    # a retry on the same server first waits a turn-around second, and right after a
    # kill leastconn picks the dead node (no connections) for every client dialling again.
    retries 2
    option redispatch 1

frontend xmpp_client
{binds}
    default_backend nodes

backend nodes
    balance leastconn
    option tcp-check
    tcp-check connect
    tcp-check send "{stream_header(domain)}"
    # A node whose login gate is full answers `resource-constraint` (retry later): it is
    # alive and serving its sessions. Marking it down would cut all of them at once
    # (shutdown-sessions), and their reconnections would fill the gate again: a storm.
    tcp-check expect rstring <stream:features|resource-constraint
    default-server inter {CHECK_INTERVAL_MS}ms fall {CHECK_FALL} rise {CHECK_RISE} on-marked-down shutdown-sessions
{servers}
""" + (monitor_section(monitor) if monitor else "")


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")  # sbin: not on every user's PATH


def server_states(stats_socket: Path) -> dict[str, str]:
    """`{node: "UP" | "DOWN" | ...}` as HAProxy sees the nodes now (its stats socket)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    rows = [line.split(",") for line in text.decode().splitlines() if line.startswith("nodes,")]
    return {row[1]: row[17] for row in rows if row[1] != "BACKEND"}


class ServiceAddress:
    """HAProxy for `up`: `argv()` to start it (the supervisor owns the process)."""

    def __init__(self, binary: str, directory: Path, domain: str, host: str, port: int,
                 backends: list[Backend], also_bind: tuple[str, ...] = (), monitor: str | None = None) -> None:
        self.binary, self.host, self.port = binary, host, port
        self.stats_socket = directory / "haproxy.sock"
        self.config_path = directory / "haproxy.cfg"
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # haproxy raises its soft limit up to this
        text = config_text(domain, host, port, backends, directory, max_connections(limit), also_bind, monitor)
        self.config_path.write_text(text)
        self.config_path.chmod(0o600)

    def check_config(self) -> str | None:
        """HAProxy's own verdict on the file (`-c`): None when valid, else its message."""
        result = subprocess.run([self.binary, "-c", "-q", "-f", str(self.config_path)],
                                capture_output=True, text=True, timeout=30)
        return None if result.returncode == 0 else (result.stderr or result.stdout).strip()

    def argv(self) -> list[str]:
        return [self.binary, "-db", "-f", str(self.config_path)]  # -db: foreground, no daemon

    def wait_all_up(self, deadline_s: float) -> dict[str, str]:
        """Wait until HAProxy's checks see every node UP (a node's port opens once its
        SRM serves, and HAProxy needs `rise` checks more); the last states seen."""
        end, states = time.monotonic() + deadline_s, {}
        while time.monotonic() < end:
            try:
                states = server_states(self.stats_socket)
            except OSError:
                states = {}
            if states and all(s.startswith("UP") for s in states.values()):
                break
            time.sleep(0.2)
        return states
