"""A cluster of two redundancy groups (four node processes), users on every node.

Transcripts: "alice on n1 subscribes to carol on n3; carol approves; they chat";
"erin dials n1 but n4 serves her: n1 relays her session, frank cannot tell"; "the
n1->n3 link is cut twice while gina sends 300 messages to hank: all arrive, once, in
order"; "n4 is killed: what ivy sends jack meanwhile waits for him".

The cluster is provisioned once per module and backend (SQLite, PostgreSQL) with the
real CLI; each test uses its own users so the tests do not see each other. The link
n1 -> n3 runs through a `FaultProxy` (n1 dials it via PRESENCE_HA_LINK_DIAL).
Waiting is polling with deadlines; every process and proxy is reaped in the finalizer.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import ssl
from pathlib import Path

import pytest

from presence_ha.server.link import Kind, LinkClient, LinkConfig, LinkOptions, LinkRejected
from presence_ha.server.tls import ensure_link_certificate, link_tls

from .cluster import DOMAIN, FAST_LIMITS, Cluster, NodeProcess, cli, cluster_ca, free_ports, wait_until
from .faultproxy import FaultProxy

slixmpp = pytest.importorskip("slixmpp")
aioxmpp = pytest.importorskip("aioxmpp")

DEADLINE_S = 20.0
GROUPS = {"g1": ("n1", "n2"), "g2": ("n3", "n4")}
PLACEMENT = {
    "alice": "n1", "bob": "n2", "carol": "n3", "dave": "n4", "lisa": "n2", "erin": "n4", "frank": "n2",
    "gina": "n1", "hank": "n3", "ivy": "n1", "jack": "n4", "mike": "n3",
}


def password(user: str) -> str:
    return f"{user}-pw"


# --- provisioning: two groups of two, once per module and backend ------------------------

def provision_groups(db_url: str, data_dir: Path, placement: dict[str, str], groups=GROUPS,
                     params: dict[str, object] | None = None) -> dict[str, list[int]]:
    names = [n for members in groups.values() for n in members]
    ports = {name: free_ports(5) for name in names}
    cli(db_url, "db", "upgrade")
    cli(db_url, "cluster", "init", "--name", "grid", "--domain", DOMAIN)
    flags = ("--client-port", "--srm-port", "--admin-port", "--link-port", "--metrics-port")
    for name in names:
        cli(db_url, "node", "add", name, *[x for pair in zip(flags, map(str, ports[name]), strict=True) for x in pair])
    for group, members in groups.items():
        cli(db_url, "group", "add", group, *[x for n in members for x in ("--node", n)])
    cli(db_url, "param", "set", "user_assignment_mode", "None")
    for key, value in (params or {}).items():
        cli(db_url, "param", "set", key, str(value))
    csv = data_dir / "users.csv"
    csv.write_text("".join(f"{u},{password(u)}\n" for u in placement))
    cli(db_url, "user", "import", str(csv))
    for user, node in placement.items():
        cli(db_url, "user", "assign", user, node)
    return ports


def start_nodes(cluster: Cluster, env: dict[str, dict[str, str]] | None = None) -> None:
    for node in cluster.nodes.values():
        saved = dict(os.environ)
        os.environ.update((env or {}).get(node.name, {}))
        try:
            node.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)


def make_cluster(db_url: str, data_dir: Path, placement=PLACEMENT, groups=GROUPS, params=None) -> Cluster:
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = provision_groups(db_url, data_dir, placement, groups, params)
    procs = {name: NodeProcess(name, p[0], p[4], data_dir, db_url, FAST_LIMITS) for name, p in ports.items()}
    cluster = Cluster(db_url, DOMAIN, data_dir, procs, {u: password(u) for u in placement})
    cluster.link_ports = {name: p[3] for name, p in ports.items()}
    return cluster


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_db_url(request, tmp_path_factory):
    from tests.conftest import _new_postgres_url, _pg_drop

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('grid') / 'presence-ha.sqlite3'}"
        return
    url = _new_postgres_url()
    yield url
    asyncio.run(_pg_drop(url))


@pytest.fixture(scope="module")
def grid(module_db_url, tmp_path_factory):
    """Four running nodes; the n1 -> n3 link goes through `grid.proxy`."""
    cluster = make_cluster(module_db_url, tmp_path_factory.mktemp("nodes"))
    proxy = FaultProxy("127.0.0.1", cluster.link_ports["n3"]).start()
    cluster.proxy = proxy
    try:
        start_nodes(cluster, {"n1": {"PRESENCE_HA_LINK_DIAL": f"n3=127.0.0.1:{proxy.port}"}})
        yield cluster
    finally:
        for node in cluster.nodes.values():
            if node.alive():
                node.process.send_signal(signal.SIGCONT)
        cluster.stop()
        proxy.close()


# --- clients ---------------------------------------------------------------------------------

class Slix(slixmpp.ClientXMPP):
    """A slixmpp client that records what it sees, for polling."""

    def __init__(self, grid: Cluster, user: str, resource: str) -> None:
        super().__init__(f"{user}@{DOMAIN}/{resource}", password(user))
        self.seen: list[tuple] = []
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.auto_authorize = None  # subscription requests are answered by hand
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", lambda m: self.seen.append(("message", m["from"].full, m["body"])))
        for kind in ("available", "unavailable", "subscribe", "subscribed"):
            self.add_event_handler(f"presence_{kind}", lambda p, k=kind: self.seen.append((k, p["from"].full)))

    async def _start(self, _event) -> None:
        await self.get_roster()
        self.send_presence()
        self.ready.set()

    async def online(self, node: NodeProcess) -> Slix:
        self.connect(host=node.host, port=node.client_port)
        await asyncio.wait_for(self.ready.wait(), DEADLINE_S)
        return self

    async def sees(self, *event) -> None:
        await wait_until(lambda: event in self.seen, DEADLINE_S, f"{self.boundjid} to see {event}; saw {self.seen}")

    def bodies(self, sender: str) -> list[str]:
        return [e[2] for e in self.seen if e[0] == "message" and e[1].startswith(sender)]

    async def offline(self) -> None:
        self.disconnect()
        await asyncio.wait_for(self.disconnected, DEADLINE_S)


async def slix(grid: Cluster, user: str, resource: str = "s", node: str | None = None) -> Slix:
    return await Slix(grid, user, resource).online(grid.node(node or PLACEMENT[user]))


async def befriend(a: Slix, b: Slix) -> None:
    """a subscribes to b, b approves; then the reverse (RFC 6121 §3)."""
    for x, y in ((a, b), (b, a)):
        x.send_presence(pto=y.boundjid.bare, ptype="subscribe")
        await y.sees("subscribe", x.boundjid.bare)
        y.send_presence(pto=x.boundjid.bare, ptype="subscribed")
        await x.sees("subscribed", y.boundjid.bare)


class Aio:
    """An aioxmpp client dialling `node`, recording chat bodies and presence."""

    def __init__(self, user: str, node: NodeProcess) -> None:
        from aioxmpp.connector import STARTTLSConnector

        self.jid = aioxmpp.JID.fromstr(f"{user}@{DOMAIN}/aio")
        self.client = aioxmpp.PresenceManagedClient(
            self.jid, aioxmpp.make_security_layer(password(user), no_verify=True),
            override_peer=[(node.host, node.client_port, STARTTLSConnector())])
        self.client.presence = aioxmpp.PresenceState(True)
        self.bodies: list[tuple[str, str]] = []
        self.available: list[str] = []
        self.roster = self.client.summon(aioxmpp.RosterClient)
        dispatcher = self.client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher)
        dispatcher.register_callback(aioxmpp.MessageType.CHAT, None,
                                     lambda m: self.bodies.append((str(m.from_), m.body.any())))
        presence = self.client.summon(aioxmpp.PresenceClient)
        presence.on_available.connect(lambda full, _stanza: self.available.append(str(full)))

    async def send_chat(self, stream, to: str, body: str) -> None:
        msg = aioxmpp.Message(to=aioxmpp.JID.fromstr(to), type_=aioxmpp.MessageType.CHAT)
        msg.body[None] = body
        await stream.send(msg)

    async def subscription_is(self, contact: str, state: str) -> None:
        jid = aioxmpp.JID.fromstr(contact)
        await wait_until(lambda: jid in self.roster.items and self.roster.items[jid].subscription == state,
                         DEADLINE_S, f"{self.jid} roster item {contact} to be {state}")


def metric(node: NodeProcess, name: str) -> float:
    return node.metrics().get(name, 0.0)


# --- scenarios -------------------------------------------------------------------------------

async def test_slixmpp_subscription_presence_and_chat_across_nodes_and_groups(grid):
    alice, bob, carol = await slix(grid, "alice", "a"), await slix(grid, "bob", "b"), await slix(grid, "carol", "c")
    await befriend(alice, carol)  # n1 <-> n3: another group
    await befriend(alice, bob)  # n1 <-> n2: same group, another node
    await alice.sees("available", f"carol@{DOMAIN}/c")
    await carol.sees("available", f"alice@{DOMAIN}/a")
    await alice.sees("available", f"bob@{DOMAIN}/b")
    assert alice.client_roster[f"carol@{DOMAIN}"]["subscription"] == "both"
    alice.send_message(mto=f"carol@{DOMAIN}", mbody="hello from n1", mtype="chat")
    carol.send_message(mto=f"alice@{DOMAIN}/a", mbody="hello from n3", mtype="chat")
    await carol.sees("message", f"alice@{DOMAIN}/a", "hello from n1")
    await alice.sees("message", f"carol@{DOMAIN}/c", "hello from n3")
    await carol.offline()
    await alice.sees("unavailable", f"carol@{DOMAIN}/c")
    alice.send_message(mto=f"carol@{DOMAIN}", mbody="while you were out", mtype="chat")
    carol2 = await slix(grid, "carol", "c2")
    await carol2.sees("message", f"alice@{DOMAIN}/a", "while you were out")  # offline storage on n3
    await carol2.sees("available", f"alice@{DOMAIN}/a")  # n1 answered carol's probe
    await alice.sees("available", f"carol@{DOMAIN}/c2")
    for client in (alice, bob, carol2):
        await client.offline()


async def test_aioxmpp_roster_subscription_and_chat_across_groups(grid):
    lisa = await slix(grid, "lisa", "l")  # n2, group g1
    dave = Aio("dave", grid.node("n4"))  # n4, group g2
    async with dave.client.connected() as stream:
        dave.roster.subscribe(aioxmpp.JID.fromstr(f"lisa@{DOMAIN}"))
        await lisa.sees("subscribe", f"dave@{DOMAIN}")
        lisa.send_presence(pto=f"dave@{DOMAIN}", ptype="subscribed")
        await dave.subscription_is(f"lisa@{DOMAIN}", "to")
        await wait_until(lambda: f"lisa@{DOMAIN}/l" in dave.available, DEADLINE_S, "dave to see lisa online")
        lisa.send_message(mto=f"dave@{DOMAIN}", mbody="hi dave", mtype="chat")
        await wait_until(lambda: (f"lisa@{DOMAIN}/l", "hi dave") in dave.bodies, DEADLINE_S, f"dave got {dave.bodies}")
        await dave.send_chat(stream, f"lisa@{DOMAIN}", "hi lisa")
        await lisa.sees("message", f"dave@{DOMAIN}/aio", "hi lisa")
    await lisa.offline()


async def test_a_client_that_dialled_the_wrong_node_is_relayed_unnoticed(grid):
    n1, n4 = grid.node("n1"), grid.node("n4")
    frank = await slix(grid, "frank", "f")  # n2
    before = metric(n1, "jsm_sessions_client"), metric(n4, "jsm_sessions_client")
    erin = Aio("erin", n1)  # erin is served by n4 but dials n1
    async with erin.client.connected() as stream:
        await wait_until(lambda: metric(n4, "jsm_sessions_client") == before[1] + 1, DEADLINE_S,
                         "erin's session to be counted on n4")
        assert metric(n1, "jsm_sessions_client") == before[0]  # n1 only carries the stream
        erin.roster.subscribe(aioxmpp.JID.fromstr(f"frank@{DOMAIN}"))
        await frank.sees("subscribe", f"erin@{DOMAIN}")
        frank.send_presence(pto=f"erin@{DOMAIN}", ptype="subscribed")
        frank.send_presence(pto=f"erin@{DOMAIN}", ptype="subscribe")
        await erin.subscription_is(f"frank@{DOMAIN}", "to")
        await wait_until(lambda: f"frank@{DOMAIN}/f" in erin.available, DEADLINE_S, "erin to see frank")
        erin.roster.approve(aioxmpp.JID.fromstr(f"frank@{DOMAIN}"))
        await frank.sees("available", f"erin@{DOMAIN}/aio")
        await erin.send_chat(stream, f"frank@{DOMAIN}", "relayed hello")
        await frank.sees("message", f"erin@{DOMAIN}/aio", "relayed hello")
        frank.send_message(mto=f"erin@{DOMAIN}/aio", mbody="hello erin", mtype="chat")
        await wait_until(lambda: (f"frank@{DOMAIN}/f", "hello erin") in erin.bodies, DEADLINE_S,
                         f"erin got {erin.bodies}")
    await frank.sees("unavailable", f"erin@{DOMAIN}/aio")
    await wait_until(lambda: metric(n4, "jsm_sessions_client") == before[1], DEADLINE_S, "n4 to end erin's session")
    await frank.offline()


async def test_a_cut_link_reconnects_and_loses_no_stanza(grid):
    gina, hank = await slix(grid, "gina", "g"), await slix(grid, "hank", "h")  # n1 -> (proxy) -> n3
    count = 300
    cuts_at = {100, 200}
    for i in range(count):
        if i in cuts_at:
            await wait_until(lambda i=i: len(hank.bodies(f"gina@{DOMAIN}")) >= i - 50, DEADLINE_S, "traffic flowing")
            accepted = grid.proxy.connections_accepted
            grid.proxy.cut()
            grid.proxy.heal()
            await wait_until(lambda accepted=accepted: grid.proxy.connections_accepted > accepted, DEADLINE_S,
                             "n1 to redial n3")
        gina.send_message(mto=f"hank@{DOMAIN}/h", mbody=f"m{i:04d}", mtype="chat")
        if i % 25 == 0:
            await asyncio.sleep(0)  # let slixmpp write
    expected = [f"m{i:04d}" for i in range(count)]
    await wait_until(lambda: len(hank.bodies(f"gina@{DOMAIN}")) >= count, DEADLINE_S,
                     f"all {count} messages; got {len(hank.bodies(f'gina@{DOMAIN}'))}")
    assert hank.bodies(f"gina@{DOMAIN}") == expected  # exactly once, in order
    assert grid.proxy.connections_accepted >= 3
    await gina.offline()
    await hank.offline()


async def test_unauthenticated_peers_are_rejected(grid, tmp_path):
    """Inside the links' TLS (a certificate of the cluster CA, test_link_tls.py for the TLS
    refusals) the link's own handshake still refuses a wrong secret and a node name that
    is not a peer."""
    port = grid.link_ports["n1"]
    ca = cluster_ca(grid.db_url)
    options = LinkOptions(heartbeat_interval_s=0.2, dead_after_s=3, handshake_timeout_s=3, connect_timeout_s=3,
                          backoff_initial_s=0.5, backoff_max_s=1)
    downs: dict[str, list] = {"secret": [], "name": []}
    attempts = [("secret", "n2", b"not-the-cluster-secret-at-all"), ("name", "intruder", os.urandom(24))]
    clients = []
    for key, name, secret in attempts:
        (tmp_path / key).mkdir()
        tls = link_tls(*ensure_link_certificate(tmp_path / key, "n2", ca), ca[0])  # a peer's certificate
        client = LinkClient(LinkConfig(name, secret, os.urandom(16)), "n1", "127.0.0.1", port,
                            on_frame=lambda *_: None, rng=random.Random(1), on_down=downs[key].append,
                            options=options, tls=tls)
        client.start()
        client.try_send(Kind.STANZA, b"R\n<message to='alice@example.test' from='x@evil.test'><body>x</body></message>")
        clients.append(client)
    try:
        await wait_until(lambda: all(any(isinstance(d, LinkRejected) for d in v) for v in downs.values()),
                         DEADLINE_S, f"both intruders rejected: {downs}")
        assert not any(client.is_up for client in clients)
    finally:
        for client in clients:
            await client.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # garbage is dropped
    writer.write(b"GET / HTTP/1.0\r\n\r\n" * 10)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), DEADLINE_S) is not None
    writer.close()
    mike, carol = await slix(grid, "mike", "m"), await slix(grid, "alice", "a3", node="n1")
    carol.send_message(mto=f"mike@{DOMAIN}/m", mbody="links still fine", mtype="chat")
    await mike.sees("message", f"alice@{DOMAIN}/a3", "links still fine")
    for client in (mike, carol):
        await client.offline()


async def test_a_killed_node_gets_its_messages_after_restart(grid):
    """Runs last in the module: n4 is killed and restarted."""
    n4 = grid.node("n4")
    ivy = await slix(grid, "ivy", "i")  # n1
    n4.stop(signal.SIGKILL)
    for i in range(3):
        ivy.send_message(mto=f"jack@{DOMAIN}", mbody=f"while n4 was down {i}", mtype="chat")
        await asyncio.sleep(2.5)  # spans the link's grace: queued first, then stored offline
    n4.start()
    jack = await slix(grid, "jack", "j")
    for i in range(3):
        await jack.sees("message", f"ivy@{DOMAIN}/i", f"while n4 was down {i}")
    ivy.send_message(mto=f"jack@{DOMAIN}", mbody="and live again", mtype="chat")
    await jack.sees("message", f"ivy@{DOMAIN}/i", "and live again")
    assert len(jack.bodies(f"ivy@{DOMAIN}")) == 4  # nothing twice
    for client in (ivy, jack):
        await client.offline()
