"""IM and presence with real node processes and real clients (slixmpp and aioxmpp).

Scenarios read like transcripts: "alice subscribes to bob; bob approves; alice sees
bob online ...". Each test provisions a fresh database (SQLite file and PostgreSQL,
via `db_url`) with the `presence-ha` CLI, starts one real node process, and reaps it
in the fixture finalizer. Waiting is polling with a deadline, never a bare sleep.

Until the shared fixture `tests/integration/cluster.py` exists, the small node
launcher below does the same job for a single node.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time

import pytest

slixmpp = pytest.importorskip("slixmpp")
aioxmpp = pytest.importorskip("aioxmpp")

DOMAIN = "example.test"
from tests.integration.cluster import _bindable, free_ports  # noqa: E402

PASSWORD = "secret-pw"
DEADLINE_S = 15.0
CLI = [sys.executable, "-c", "from presence_ha.server.cli import main; main()"]


def _free_base_port() -> int:
    """A base port B with B..B+4 free (the node's five ports), outside the ephemeral range."""
    for _ in range(200):
        (base,) = free_ports(1)
        if all(_bindable(port) for port in range(base + 1, base + 5)):
            return base
    raise RuntimeError("no five consecutive free ports")


def _cli(db_url: str, *args: str, stdin: str | None = None) -> None:
    env = dict(os.environ, PRESENCE_HA_DB=db_url)
    done = subprocess.run(CLI + list(args), env=env, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"presence-ha {' '.join(args)}: {done.stdout}{done.stderr}"


def _wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "node process exited during start-up"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"node did not listen on {port}")


@pytest.fixture
def node(db_url, tmp_path):
    """One provisioned, running node; yields its client port."""
    base = _free_base_port()
    _cli(db_url, "db", "upgrade")
    _cli(db_url, "cluster", "init", "--name", "im", "--domain", DOMAIN)
    _cli(db_url, "node", "add", "n1", "--base-port", str(base))
    _cli(db_url, "group", "add", "g1", "--node", "n1")
    users = tmp_path / "users.csv"
    users.write_text("".join(f"{user},{PASSWORD}\n" for user in ("alice", "bob", "carol")))
    _cli(db_url, "user", "import", str(users))
    env = dict(os.environ, PRESENCE_HA_DB=db_url)
    with open(tmp_path / "node.log", "w") as log:  # the child keeps its own copy
        proc = subprocess.Popen([*CLI, "node", "run", "--name", "n1", "--data-dir", str(tmp_path)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Slix(slixmpp.ClientXMPP):
    """A slixmpp client that records what it sees, for polling."""

    def __init__(self, jid: str, port: int) -> None:
        super().__init__(jid, PASSWORD)
        self.port = port
        self.seen: list[tuple] = []
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.auto_authorize = None  # answer subscription requests by hand
        self.register_plugin("xep_0280")
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", lambda m: self.seen.append(("message", m["from"].full, m["body"])))
        self.add_event_handler("carbon_received", lambda m: self.seen.append(
            ("carbon-received", m["carbon_received"]["body"])))
        self.add_event_handler("carbon_sent", lambda m: self.seen.append(("carbon-sent", m["carbon_sent"]["body"])))
        for kind in ("available", "unavailable", "subscribe", "subscribed"):
            self.add_event_handler(f"presence_{kind}", lambda p, k=kind: self.seen.append((k, p["from"].full)))

    async def _start(self, _event) -> None:
        await self.get_roster()
        self.send_presence()
        self.ready.set()

    async def online(self) -> Slix:
        self.connect(host="127.0.0.1", port=self.port)
        await asyncio.wait_for(self.ready.wait(), DEADLINE_S)
        return self

    async def sees(self, *event) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while event not in self.seen:
            assert time.monotonic() < deadline, f"{self.boundjid} never saw {event}; saw {self.seen}"
            await asyncio.sleep(0.02)

    async def offline(self) -> None:
        self.disconnect()
        await asyncio.wait_for(self.disconnected, DEADLINE_S)


async def befriend(a: Slix, b: Slix) -> None:
    """a subscribes to b, b approves; then the reverse."""
    for x, y in ((a, b), (b, a)):
        x.send_presence(pto=y.boundjid.bare, ptype="subscribe")
        await y.sees("subscribe", x.boundjid.bare)
        y.send_presence(pto=x.boundjid.bare, ptype="subscribed")
        await x.sees("subscribed", y.boundjid.bare)


async def test_slixmpp_subscription_presence_messages_and_offline(node):
    alice = await Slix("alice@example.test/a", node).online()
    bob = await Slix("bob@example.test/b", node).online()
    await befriend(alice, bob)
    await alice.sees("available", "bob@example.test/b")
    await bob.sees("available", "alice@example.test/a")
    assert alice.client_roster["bob@example.test"]["subscription"] == "both"
    alice.send_message(mto="bob@example.test", mbody="hello bob", mtype="chat")
    await bob.sees("message", "alice@example.test/a", "hello bob")
    await bob.offline()
    await alice.sees("unavailable", "bob@example.test/b")
    alice.send_message(mto="bob@example.test", mbody="while you were out", mtype="chat")
    bob2 = await Slix("bob@example.test/b2", node).online()
    await bob2.sees("message", "alice@example.test/a", "while you were out")
    await alice.sees("available", "bob@example.test/b2")
    await bob2.sees("available", "alice@example.test/a")  # answer to bob's probe
    await alice.offline()
    await bob2.offline()


async def test_slixmpp_carbons(node):
    alice = await Slix("alice@example.test/a", node).online()
    alice2 = await Slix("alice@example.test/a2", node).online()
    bob = await Slix("bob@example.test/b", node).online()
    bob2 = await Slix("bob@example.test/b2", node).online()
    for client in (alice2, bob2):
        await client["xep_0280"].enable()
    alice.send_message(mto="bob@example.test/b", mbody="carbon me", mtype="chat")
    await bob.sees("message", "alice@example.test/a", "carbon me")
    await bob2.sees("carbon-received", "carbon me")
    await alice2.sees("carbon-sent", "carbon me")
    for client in (alice, alice2, bob, bob2):
        await client.offline()


async def test_aioxmpp_roster_and_messages_with_a_slixmpp_peer(node):
    import aioxmpp.roster
    from aioxmpp.connector import STARTTLSConnector

    carol_jid = aioxmpp.JID.fromstr("carol@example.test/aio")
    client = aioxmpp.PresenceManagedClient(
        carol_jid, aioxmpp.make_security_layer(PASSWORD, no_verify=True),
        override_peer=[("127.0.0.1", node, STARTTLSConnector())],
    )
    client.presence = aioxmpp.PresenceState(True)
    received: list[str] = []
    roster = client.summon(aioxmpp.roster.RosterClient)
    dispatcher = client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher)
    dispatcher.register_callback(aioxmpp.MessageType.CHAT, None, lambda m: received.append(m.body.any()))
    alice = await Slix("alice@example.test/a", node).online()
    async with client.connected() as stream:
        await roster.set_entry(aioxmpp.JID.fromstr("alice@example.test"), name="Alice", add_to_groups={"Friends"})
        deadline = time.monotonic() + DEADLINE_S
        while aioxmpp.JID.fromstr("alice@example.test") not in roster.items:
            assert time.monotonic() < deadline, "roster push never arrived"
            await asyncio.sleep(0.02)
        item = roster.items[aioxmpp.JID.fromstr("alice@example.test")]
        assert (item.name, item.groups, item.subscription) == ("Alice", {"Friends"}, "none")
        roster.subscribe(aioxmpp.JID.fromstr("alice@example.test"))
        await alice.sees("subscribe", "carol@example.test")
        alice.send_presence(pto="carol@example.test", ptype="subscribed")
        while item.subscription != "to":
            assert time.monotonic() < deadline, f"subscription is {item.subscription}"
            await asyncio.sleep(0.02)
        alice.send_message(mto="carol@example.test", mbody="hi carol", mtype="chat")
        while "hi carol" not in received:
            assert time.monotonic() < deadline, f"carol got {received}"
            await asyncio.sleep(0.02)
        msg = aioxmpp.Message(to=aioxmpp.JID.fromstr("alice@example.test"), type_=aioxmpp.MessageType.CHAT)
        msg.body[None] = "hi alice"
        await stream.send(msg)
        await alice.sees("message", "carol@example.test/aio", "hi alice")
    await alice.offline()
