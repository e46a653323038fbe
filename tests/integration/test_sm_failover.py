"""Clients without our extension across a SIGKILL of their node (issue #6, SPEC §9).

Both nodes sit behind one address (`EitherNode`, as one DNS name for the pair would
be): a connection goes to the first node that accepts it. alice is served by n1, bob
by n2 (the backup of n1's users, and the survivor).
- XEP-0198 with resumption: alice's session state (counters, unacknowledged stanzas)
  is replicated to n2 as it changes (`server.cluster.sm_mirror`). n1 is SIGKILLed;
  alice reconnects to the same address, reaches n2, and `<resume/>` succeeds there:
  `<resumed h=''/>` counts every stanza n1 acknowledged, the stanzas she had not
  acknowledged are sent again, and nothing bob sent is lost, before or after the kill.
  A raw client checks the counters exactly; slixmpp and aioxmpp do it as they do.
- Without XEP-0198 resumption (slixmpp without the plugin, aioxmpp with resumption
  off) the clients fail over by logging in again, on n2.
- While n1 lives, a `<resume/>` on n2 fails (`item-not-found`): n2 does not serve
  alice, and two nodes never serve one user.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from types import SimpleNamespace

import pytest

from tests.integration.cluster import (  # noqa: F401
    FAST_LIMITS,
    Cluster,
    RawClient,
    active_nodes,
    ha_pair_factory,
    slix_disconnect,
    slix_login,
    wait_until,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]

SM = "urn:xmpp:sm:3"
DEADLINE_S = 20.0
USERS = (("alice", "alice-pw"), ("bob", "bob-pw"))
SETS = (*FAST_LIMITS, "limits.sm_resume_timeout_s=60")


class EitherNode:
    """A TCP front for the pair: each connection goes to the first node that accepts."""

    def __init__(self, cluster: Cluster) -> None:
        self.targets = [(n.host, n.client_port) for n in cluster.nodes.values()]
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> EitherNode:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def address(self) -> SimpleNamespace:  # what RawClient.connect reads
        return SimpleNamespace(host="127.0.0.1", client_port=self.port)

    async def _accept(self, reader, writer) -> None:
        self._tasks.add(asyncio.current_task())
        self._writers.add(writer)
        try:
            for host, port in self.targets:
                with contextlib.suppress(OSError):
                    up_reader, up_writer = await asyncio.open_connection(host, port)
                    self._writers.add(up_writer)
                    break
            else:
                return
            pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)),
                     asyncio.ensure_future(self._pipe(up_reader, writer))]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in pipes:
                pipe.cancel()
            up_writer.transport.abort()
        finally:
            writer.transport.abort()
            self._tasks.discard(asyncio.current_task())

    @staticmethod
    async def _pipe(reader, writer) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


def kill_n1(cluster: Cluster) -> None:
    cluster.node("n1").process.send_signal(signal.SIGKILL)
    cluster.node("n1").process.wait(10)


def bodies(text: str) -> list[str]:
    import re

    return re.findall(r"<body>([^<]*)</body>", text)


# -- a raw client: the counters, exactly ---------------------------------------------------

async def raw_resumable(front: EitherNode, username: str, resource: str) -> tuple[RawClient, str]:
    client = await RawClient.connect(front.address)
    await client.login(username, dict(USERS)[username], resource=resource)
    await client.send(f"<enable xmlns='{SM}' resume='true'/>")
    resume_id = (await client.expect(r"<enabled [^>]*id='([0-9a-f]+)'")).group(1)
    return client, resume_id


async def test_raw_client_resumes_on_the_backup_with_exact_counters(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory(users=USERS, placement={"bob": "n2"}, sets=SETS)
    bob = await slix_login(cluster, "bob", node="n2", resource="desk")
    bob.send_presence()
    bob.send_presence()
    async with EitherNode(cluster) as front:
        alice, resume_id = await raw_resumable(front, "alice", "phone")
        # alice sends three stanzas and asks for the server's count: n1 answers only
        # once n2 holds it (and the messages it routed to bob before)
        got: list[str] = []
        bob.add_event_handler("message", lambda m: got.append(m["body"]))
        for i in range(3):
            await alice.send(f"<message to='bob@example.test' type='chat'><body>to-bob-{i}</body></message>")
        await alice.send(f"<r xmlns='{SM}'/>")
        await alice.expect(f"<a xmlns='{SM}' h='3'/>")
        # bob writes six messages; alice reads them and acknowledges the first two only
        for i in range(6):
            bob.send_message(mto="alice@example.test/phone", mbody=f"to-alice-{i}", mtype="chat")
        seen = ""
        while len(bodies(seen)) < 6:
            seen += (await alice.expect(r"<message .*?</message>")).group(0)
        assert bodies(seen) == [f"to-alice-{i}" for i in range(6)]
        await alice.send(f"<a xmlns='{SM}' h='2'/>")
        await alice.send(f"<r xmlns='{SM}'/>")  # a round trip: n1 read the <a h='2'/> above
        await alice.expect(f"<a xmlns='{SM}' h='3'/>")

        kill_n1(cluster)
        alice.close()
        again = await RawClient.connect(front.address)
        await again.starttls()
        assert await again.auth_plain("alice", "alice-pw") == "success"
        await again.open_stream()
        await again.send(f"<resume xmlns='{SM}' previd='{resume_id}' h='2'/>")
        await again.expect(f"<resumed xmlns='{SM}' h='3' previd='{resume_id}'/>", timeout=DEADLINE_S)
        resent = ""
        while len(bodies(resent)) < 4:
            resent += (await again.expect(r"<message .*?</message>")).group(0)
        assert bodies(resent) == [f"to-alice-{i}" for i in range(2, 6)]
        assert active_nodes(cluster.db_url)["alice"] == "n2"

        # the session carries on on n2, counters continued
        bob.send_message(mto="alice@example.test/phone", mbody="after", mtype="chat")
        await again.expect(r"<body>after</body>")
        await again.send("<message to='bob@example.test' type='chat'><body>back</body></message>")
        await again.send(f"<r xmlns='{SM}'/>")
        await again.expect(f"<a xmlns='{SM}' h='4'/>")
        await wait_until(lambda: "back" in got, 5, "bob gets alice's message from n2")
        assert got.count("to-bob-0") == 1
        again.close()
    await slix_disconnect(bob)


async def test_resume_on_the_backup_fails_while_the_primary_serves(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory(users=USERS, placement={"bob": "n2"}, sets=SETS)
    async with EitherNode(cluster) as front:
        alice, resume_id = await raw_resumable(front, "alice", "phone")
        await wait_until(lambda: "replicated to n2" in cluster.node("n1").log(), 5, "n1 replicating")
        other = await RawClient.connect(cluster.node("n2"))
        await other.starttls()
        assert await other.auth_plain("alice", "alice-pw") == "success"
        await other.open_stream()
        await other.send(f"<resume xmlns='{SM}' previd='{resume_id}' h='0'/>")
        await other.expect(r"<failed [^>]*><item-not-found")
        other.close()
        await alice.send(f"<r xmlns='{SM}'/>")  # the session on n1 is untouched
        await alice.expect(f"<a xmlns='{SM}' h='0'/>")
        alice.close()
    assert active_nodes(cluster.db_url)["alice"] == "n1"


# -- real clients ---------------------------------------------------------------------------

class SlixOnFront:
    """A slixmpp client of the pair's one address, that reconnects there when dropped
    (what an application using slixmpp does; slixmpp ignores `<enabled location=''/>`)."""

    def __init__(self, cluster: Cluster, front: EitherNode, username: str, resource: str, sm: bool) -> None:
        import slixmpp

        self.front = front
        self.client = slixmpp.ClientXMPP(f"{cluster.jid(username)}/{resource}", dict(USERS)[username])
        for plugin in ("xep_0030", "xep_0199") + (("xep_0198",) if sm else ()):
            self.client.register_plugin(plugin)
        self.client.ssl_context.check_hostname = False
        self.client.ssl_context.verify_mode = ssl.CERT_NONE
        self.client.enable_direct_tls = False  # the client port speaks STARTTLS (RFC 6120 §5)
        self.starts = self.resumes = 0
        self.bodies: list[str] = []
        self.live = self.closing = False
        for name, handler in (("session_start", self._started), ("session_resumed", self._resumed),
                              ("message", lambda m: self.bodies.append(m["body"])),
                              ("disconnected", self._again)):
            self.client.add_event_handler(name, handler)

    def connect(self) -> None:
        self.client.connect("127.0.0.1", self.front.port)

    def _started(self, _event) -> None:
        self.starts += 1
        self.live = True
        self.client.send_presence()

    def _resumed(self, _event) -> None:
        self.resumes += 1
        self.live = True

    def _again(self, _event) -> None:
        """A session's connection dropped: dial again (slixmpp retries failed dials itself)."""
        if self.live and not self.closing:
            self.live = False
            asyncio.get_running_loop().call_later(0.2, self.connect)

    async def close(self) -> None:
        self.closing = True
        await slix_disconnect(self.client)


class Chatter:
    """bob (on n2) writes to alice every 20 ms until stopped: no message may be lost."""

    def __init__(self, bob, to: str) -> None:
        self.bob, self.to, self.sent = bob, to, []
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            body = f"live-{len(self.sent)}"
            self.bob.send_message(mto=self.to, mbody=body, mtype="chat")
            self.sent.append(body)
            await asyncio.sleep(0.02)

    async def stop(self) -> list[str]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.sent


async def test_slixmpp_with_stream_management_resumes_on_the_backup_nothing_lost(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory(users=USERS, placement={"bob": "n2"}, sets=SETS)
    bob = await slix_login(cluster, "bob", node="n2", resource="desk")
    bob.send_presence()
    async with EitherNode(cluster) as front:
        alice = SlixOnFront(cluster, front, "alice", "phone", sm=True)
        alice.connect()
        sm = alice.client.plugin["xep_0198"]
        await wait_until(lambda: alice.starts == 1 and sm.sm_id, DEADLINE_S, "alice resumable on n1")
        chatter = Chatter(bob, cluster.jid("alice"))
        await wait_until(lambda: len(alice.bodies) >= 10, DEADLINE_S, "alice reading bob's messages")

        kill_n1(cluster)
        await wait_until(lambda: alice.resumes == 1, DEADLINE_S, "alice resumed")
        assert alice.starts == 1, "resumed, not logged in again"
        assert active_nodes(cluster.db_url)["alice"] == "n2"
        resumed_with = len(alice.bodies)
        await wait_until(lambda: len(alice.bodies) >= resumed_with + 10, DEADLINE_S, "more messages on n2")
        sent = await chatter.stop()
        await wait_until(lambda: set(sent) <= set(alice.bodies), DEADLINE_S,
                         "every message bob sent", interval_s=0.1)
        duplicates = len(alice.bodies) - len(set(alice.bodies))
        print(f"\n{len(sent)} messages across the kill, none lost, {duplicates} delivered twice")
        assert "resumed on n2 from n1's replica" in cluster.node("n2").log()
        await alice.close()
    await slix_disconnect(bob)


def aioxmpp_client(cluster: Cluster, front: EitherNode, username: str, resource: str, resumable: bool):
    from datetime import timedelta

    import aioxmpp
    from aioxmpp.connector import STARTTLSConnector

    client = aioxmpp.PresenceManagedClient(
        aioxmpp.JID.fromstr(f"{cluster.jid(username)}/{resource}"),
        aioxmpp.make_security_layer(dict(USERS)[username], no_verify=True),
        override_peer=[("127.0.0.1", front.port, STARTTLSConnector())],
    )
    client.resumption_timeout = None if resumable else 0  # 0: XEP-0198 acks without resumption
    client.backoff_start = timedelta(seconds=0.2)
    client.presence = aioxmpp.PresenceState(True)
    client.bodies, client.counts = [], {"established": 0, "resumed": 0, "destroyed": 0}
    dispatcher = client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher)
    dispatcher.register_callback(aioxmpp.MessageType.CHAT, None, lambda m: client.bodies.append(m.body.any()))
    for name in client.counts:
        getattr(client, f"on_stream_{name}").connect(
            lambda *_a, name=name: client.counts.__setitem__(name, client.counts[name] + 1))
    return client


async def test_aioxmpp_with_stream_management_resumes_on_the_backup(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory(users=USERS, placement={"bob": "n2"}, sets=SETS)
    bob = await slix_login(cluster, "bob", node="n2", resource="desk")
    bob.send_presence()
    async with EitherNode(cluster) as front:
        alice = aioxmpp_client(cluster, front, "alice", "aio", resumable=True)

        try:
            await wait_until(lambda: alice.counts["established"] == 1 and alice.stream.sm_resumable, DEADLINE_S,
                             "alice resumable on n1")
            chatter = Chatter(bob, cluster.jid("alice"))
            await wait_until(lambda: len(alice.bodies) >= 10, DEADLINE_S, "alice reading bob's messages")
            kill_n1(cluster)
            await wait_until(lambda: alice.counts["resumed"] == 1, DEADLINE_S, "alice resumed")
            assert alice.counts == {"established": 1, "resumed": 1, "destroyed": 0}
            resumed_with = len(alice.bodies)
            await wait_until(lambda: len(alice.bodies) >= resumed_with + 10, DEADLINE_S, "more messages on n2")
            sent = await chatter.stop()
            await wait_until(lambda: set(sent) <= set(alice.bodies), DEADLINE_S, "every message bob sent",
                             interval_s=0.1)
        finally:
            alice.stop()
    await slix_disconnect(bob)


async def test_clients_without_resumption_fail_over_by_logging_in_again(ha_pair_factory) -> None:  # noqa: F811
    cluster = ha_pair_factory(users=USERS, placement={"bob": "n2"}, sets=SETS)
    bob = await slix_login(cluster, "bob", node="n2", resource="desk")
    bob.send_presence()
    async with EitherNode(cluster) as front:
        slix = SlixOnFront(cluster, front, "alice", "slix", sm=False)
        slix.connect()
        aio = aioxmpp_client(cluster, front, "alice", "aio", resumable=False)

        try:
            await wait_until(lambda: slix.starts == 1 and aio.counts["established"] == 1, DEADLINE_S,
                             "alice on n1, twice")
            kill_n1(cluster)
            await wait_until(lambda: slix.starts == 2, DEADLINE_S, "slixmpp logged in again")
            await wait_until(lambda: aio.counts["established"] == 2, DEADLINE_S, "aioxmpp logged in again")
            assert aio.counts["destroyed"] == 1 and slix.resumes == 0  # state lost: a new session
            assert active_nodes(cluster.db_url)["alice"] == "n2"
            for resource in ("slix", "aio"):
                bob.send_message(mto=f"{cluster.jid('alice')}/{resource}", mbody=f"hi {resource}", mtype="chat")
            await wait_until(lambda: "hi slix" in slix.bodies and "hi aio" in aio.bodies, DEADLINE_S, "both on n2")
        finally:
            aio.stop()
            await slix.close()
    await slix_disconnect(bob)
