"""Real XMPP clients across failover and fallback, on real node processes (SPEC §1, §7, §9).

Scenarios (HA pair n1/n2; alice and bob both served by n1; each has ONE slixmpp
connection that, when dropped, logs in again where it is sent: see-other-host, else the
other node):
- n1 is SIGKILLed: alice and bob log in on n2 and chat there; ActiveJsmSessions moves
  from n1 to n2. n1 comes back (Failed Over / Initialization), the admin falls back:
  n2 sends both to n1 with see-other-host, they chat on n1, the counters move back.
- the admin stops n1's Presence Engine: alice's messages bounce, then after the
  Critical Service Delay n1 fails over (row 12); both chat on n2. The admin starts the
  service (row 11) and falls back (row 1).
A watcher polls the database and both nodes' gauges the whole time: a node never holds
active sessions for more users than the database says it serves (SPEC §9).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
import urllib.error

import pytest
import slixmpp

from tests.integration.cluster import (  # noqa: F401
    Cluster,
    active_nodes,
    ha_pair_factory,
    ha_states,
    poll_until,
    spawn_node,
    wait_until,
)

GAUGE = "active_jsm_sessions"


class FollowingClient:
    """One slixmpp connection that logs in again wherever it is sent after a drop."""

    def __init__(self, cluster: Cluster, username: str) -> None:
        self.cluster, self.username = cluster, username
        self.addresses = {name: (n.host, n.client_port) for name, n in cluster.nodes.items()}
        self.client = slixmpp.ClientXMPP(cluster.jid(username), cluster.users[username])
        self.client.max_redirects = -1  # redirects are followed here (slixmpp ignores them with a fixed address)
        self.client.ssl_context.check_hostname = False
        self.client.ssl_context.verify_mode = ssl.CERT_NONE
        self.client.enable_direct_tls = False  # the client port speaks STARTTLS (RFC 6120 §5)
        self.node: str | None = None  # where the current session is, None while logged out
        self.target = "n1"
        self.logins: list[str] = []
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self._retry: asyncio.TimerHandle | None = None
        self._closing = False
        for name, handler in (("session_start", self._started), ("disconnected", self._dropped),
                              ("connection_failed", self._failed), ("stream_error", self._stream_error),
                              ("message", self._message)):
            self.client.add_event_handler(name, handler)

    def connect(self, node: str) -> None:
        self.target = node
        self.client.connect(*self.addresses[node])

    async def logged_in(self, node: str, timeout: float = 30) -> None:
        await wait_until(lambda: self.node == node, timeout, f"{self.username} logged in on {node}")

    def _started(self, _event) -> None:
        self.node = self.target
        self.logins.append(self.target)
        self.client.send_presence()

    def _stream_error(self, error) -> None:
        if error["condition"] == "see-other-host":
            address = error["see_other_host"]
            self.target = next(n for n, (h, p) in self.addresses.items() if f"{h}:{p}" == address)

    def _message(self, msg) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.inbox.put_nowait(msg["body"])

    def _dropped(self, _event) -> None:
        was, self.node = self.node, None
        if was is not None and was == self.target:
            self.target = "n2" if was == "n1" else "n1"  # dropped without a redirect: try the other node
        self._again()

    def _failed(self, _event) -> None:
        self.client.cancel_connection_attempt()
        self.target = "n2" if self.target == "n1" else "n1"
        self._again()

    def _again(self) -> None:
        if self._closing:
            return
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(
            0.2, lambda: self.client.connect(*self.addresses[self.target]))

    async def close(self) -> None:
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
        self.client.cancel_connection_attempt()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.client.disconnect(wait=1), 5)


async def chat(sender: FollowingClient, receiver: FollowingClient, text: str, timeout: float = 20) -> None:
    """`sender` sends `text` to `receiver` (again every second) until it arrives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sender.node is not None:
            sender.client.send_message(mto=receiver.cluster.jid(receiver.username), mbody=text, mtype="chat")
        try:
            while True:
                if await asyncio.wait_for(receiver.inbox.get(), 1.0) == text:
                    return
        except TimeoutError:
            continue
    raise AssertionError(f"{receiver.username} did not receive {text!r} from {sender.username}")


class Watcher:
    """Polls the database and the nodes' gauges: no node serves a user it does not own."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.checks, self.violations = cluster, 0, []
        self.frozen: set[str] = set()  # SIGSTOPped nodes answer nothing
        self._task = asyncio.create_task(self._run())

    def _gauges(self) -> dict[str, float]:
        seen = {}
        for name, node in self.cluster.nodes.items():
            if node.alive() and name not in self.frozen:
                with contextlib.suppress(OSError, urllib.error.URLError):
                    seen[name] = node.metrics().get(GAUGE, 0.0)
        return seen

    def _check(self) -> None:
        before = active_nodes(self.cluster.db_url)
        gauges = self._gauges()
        if active_nodes(self.cluster.db_url) != before:
            return  # users moved meanwhile: this sample proves nothing
        for name, sessions in gauges.items():
            owned = sum(1 for node in before.values() if node == name)
            if sessions > owned:
                self.violations.append(f"{name} holds {sessions:.0f} users' sessions but serves {owned}: {before}")
        self.checks += 1

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self._check)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        # Each check is two fresh reads of the database (~0.1-0.3 s on a busy CI); a fast
        # failover and fallback leave room for few of them. Five prove it watched.
        assert self.checks >= 5, f"the watcher hardly ran ({self.checks} checks)"
        assert not self.violations, self.violations[:3]


def gauge(cluster: Cluster, node: str) -> float:
    return cluster.node(node).metrics().get(GAUGE, 0.0)


@pytest.fixture
async def clients():
    made: list[FollowingClient] = []
    yield made
    for client in made:
        await client.close()


async def login_both(cluster: Cluster, clients: list) -> tuple[FollowingClient, FollowingClient]:
    alice, bob = FollowingClient(cluster, "alice"), FollowingClient(cluster, "bob")
    clients += [alice, bob]
    for client in (alice, bob):
        client.connect("n1")
        await client.logged_in("n1")
    await chat(alice, bob, "hello on n1")
    return alice, bob


@pytest.mark.timeout(180)
async def test_clients_of_a_killed_node_chat_on_the_backup_and_come_home(ha_pair_factory, clients):  # noqa: F811
    cluster = ha_pair_factory()
    alice, bob = await login_both(cluster, clients)
    watcher = Watcher(cluster)
    await wait_until(lambda: gauge(cluster, "n1") == 2, 10, "n1 counts both users")
    cluster.node("n1").process.send_signal(signal.SIGKILL)
    for client in (alice, bob):
        await client.logged_in("n2")
    await chat(alice, bob, "hello on n2")
    await chat(bob, alice, "hi back on n2")
    assert gauge(cluster, "n2") == 2
    assert alice.logins == ["n1", "n2"], "one re-login, on the backup"

    spawn_node(cluster.node("n1"))
    await wait_until(lambda: ha_states(cluster.db_url)["n1"] == ("Failed Over", "Initialization"), 30,
                     "n1 back, Failed Over")
    assert ha_states(cluster.db_url)["n2"] == ("Running in Backup Mode", "Peer Down")
    await asyncio.to_thread(cluster.cli, "ha", "fallback", "n1")
    for client in (alice, bob):
        await client.logged_in("n1")
    await chat(alice, bob, "home again")
    await wait_until(lambda: set(ha_states(cluster.db_url).values()) == {("Normal", "Normal")}, 20, "Normal/Normal")
    assert (gauge(cluster, "n1"), gauge(cluster, "n2")) == (2, 0)
    assert active_nodes(cluster.db_url) == {"alice": "n1", "bob": "n1"}
    await watcher.stop()


@pytest.mark.timeout(180)
async def test_a_stopped_presence_engine_fails_the_node_over_and_back(ha_pair_factory, clients):  # noqa: F811
    cluster = ha_pair_factory()
    alice, bob = await login_both(cluster, clients)
    watcher = Watcher(cluster)
    await asyncio.to_thread(cluster.cli, "service", "stop", "n1", "presence-engine")
    row12 = {"n1": ("Failed Over with Critical Services Not Running", "Critical Services Down"),
             "n2": ("Running in Backup Mode", "Critical Services Down")}
    await wait_until(lambda: ha_states(cluster.db_url) == row12, 20, "row 12")
    for client in (alice, bob):
        await client.logged_in("n2")
    await chat(alice, bob, "chatting on the backup")
    assert (gauge(cluster, "n1"), gauge(cluster, "n2")) == (0, 2)

    await asyncio.to_thread(cluster.cli, "service", "start", "n1", "presence-engine")
    await wait_until(lambda: ha_states(cluster.db_url)["n1"] == ("Failed Over", "Critical Services Down"), 20, "row 11")
    await asyncio.to_thread(cluster.cli, "ha", "fallback", "n1")
    for client in (alice, bob):
        await client.logged_in("n1")
    await chat(bob, alice, "back home")
    await wait_until(lambda: set(ha_states(cluster.db_url).values()) == {("Normal", "Normal")}, 20, "Normal/Normal")
    await watcher.stop()
