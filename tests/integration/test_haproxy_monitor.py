"""keepalived's track script against a real HAProxy monitor (what moves the lab's VIP).

Transcript: "HAProxy runs with one node behind it (a stub that answers the XMPP health
check) and the monitor frontend the lab gives it; the track script passes; HAProxy
hangs (SIGSTOP): the script fails within its 1 s read timeout; it resumes: the script
passes; the node goes away: once HAProxy marks it DOWN the monitor answers 503 and the
script fails; HAProxy dies: the script fails."

No root, no namespaces: HAProxy and the stub listen on the loopback on OS-chosen ports.
Needs Debian's haproxy and bash (skipped without haproxy, failed with CI=true).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from presence_ha.loadtest.lab.vip import check_script
from presence_ha.loadtest.localpair import free_ports
from presence_ha.server.cli.haproxy import Backend, ServiceAddress, haproxy_binary

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEADLINE_S = 15.0


class StubNode:
    """Answers HAProxy's XMPP check with stream features, until `stop()`."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"<stream:stream from='example.test'><stream:features/>")
                except OSError:
                    pass

    def stop(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, StubNode, Path]]:
    binary = haproxy_binary()
    if binary is None:
        if IN_CI:
            pytest.fail("CI=true and haproxy is not installed")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    node = StubNode()
    service_port, monitor_port = free_ports(2)
    service = ServiceAddress(binary, tmp_path, "example.test", "127.0.0.1", service_port,
                             [Backend("n1", "127.0.0.1", node.port)], monitor=f"127.0.0.1:{monitor_port}")
    assert service.check_config() is None
    script = tmp_path / "check-haproxy.sh"
    script.write_text(check_script(monitor_port))
    script.chmod(0o700)
    with open(tmp_path / "haproxy.log", "wb") as log:
        process = subprocess.Popen(service.argv(), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process, node, script
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(timeout=10)
        node.stop()


def passes(script: Path) -> bool:
    return subprocess.run(["bash", str(script)], capture_output=True, timeout=10).returncode == 0


def wait_for(script: Path, expected: bool, what: str) -> float:
    started = time.monotonic()
    while passes(script) != expected:
        assert time.monotonic() - started < DEADLINE_S, what
        time.sleep(0.2)
    return time.monotonic() - started


def test_the_track_script_follows_haproxy_and_the_nodes_behind_it(proxy) -> None:
    process, node, script = proxy
    wait_for(script, True, "the check passing with a node UP behind HAProxy")

    process.send_signal(signal.SIGSTOP)  # hung: the kernel still accepts, nobody answers
    started = time.monotonic()
    assert not passes(script)
    assert time.monotonic() - started < 3.0  # `read -t 1`, not keepalived's own timeout
    process.send_signal(signal.SIGCONT)
    wait_for(script, True, "the check passing again once HAProxy runs")

    node.stop()
    down_s = wait_for(script, False, "the check failing once HAProxy sees no node UP (503)")
    print(f"\nthe node gone: the check fails after {down_s:.1f}s (HAProxy's fall 3 x 1 s)")

    process.kill()
    process.wait(timeout=10)
    assert not passes(script)
