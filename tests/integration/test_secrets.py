"""Secrets at rest and their rotation, against real node processes (issue #19 item 4).

Scenarios:
- `up` (its cluster key in its data directory, the default place): the data directory
  is 0700 and every file in it 0600 (the SQLite file and its -wal/-shm, cluster.json,
  cluster.key, node logs, TLS keys in a 0700 tls/), also when an older version left
  them open; neither the database file nor its -wal holds the cluster secret or the CA
  key in clear; `ha status` finds the key by itself, a missing or wrong key is one
  line saying what to do; `cluster rotate-secret` switches both nodes, after which the
  old admin token is refused. On a cluster whose key is elsewhere, `up` refuses in one
  line and makes no key of its own.
- An HA pair with alice on n1 and bob on n2 (SQLite): `cluster rotate-secret` while
  they chat: each node answers the new admin token and refuses the old one (a web page
  session logged in with it too); the node
  links stay up (no new handshake), the SRMs stay Normal / Normal, both clients stay
  connected and keep exchanging messages across the nodes; a new link handshake
  with the old secret is refused and one with the new secret accepted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import slixmpp
from click.testing import CliRunner

from presence_ha.db import nodes
from presence_ha.server.cli import main as cli_main
from presence_ha.server.cluster_key import CA_KEY, ENV_CLUSTER_KEY, SECRET, ClusterKey, is_sealed
from presence_ha.server.link import LinkClient, LinkConfig, LinkOptions, LinkRejected
from presence_ha.server.net.admin_rpc import AdminRpcError, admin_token, call_node
from presence_ha.server.tls import ensure_link_certificate, link_tls
from tests.integration.cluster import (
    DOMAIN,
    Cluster,
    cluster_ca,
    cluster_secret,
    db_call,
    ha_states,
    start_ha_pair,
    wait_until,
)
from tests.integration.test_up import running_up

pytestmark = pytest.mark.timeout(180)
DEADLINE_S = 20.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def presence_ha(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_main, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


async def admin_answer(port: int, node: str, token: str) -> int:
    """200 if `node`'s admin RPC accepts `token`, else the refusal's HTTP status."""
    try:
        await call_node("127.0.0.1", port, token, {"op": "status", "node": node}, 5.0)
    except AdminRpcError as exc:
        if exc.status is None:
            raise AssertionError(f"{node} did not answer: {exc}") from None
        return exc.status
    return 200


def page_session(port: int, token: str) -> str:
    """The session cookie the admin page gives for the link `ha web` prints."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=10) as response:
        return response.headers["Set-Cookie"].split(";", 1)[0]


def overview_with(port: int, cookie: str) -> int:
    """The HTTP status of the page's data for a browser holding `cookie`."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def peer_seen_live(port: int, token: str, peer: str) -> bool:
    """Whether the page of the node at `port` got `peer`'s live state (its admin RPC, with its token)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        page = json.loads(response.read())
    shown = next(n for g in page["groups"] for n in g["nodes"] if n["name"] == peer)
    return shown["sessions"] is not None


# --- `up`: modes, nothing in clear, the default key place, rotation -----------------------


def test_up_keeps_its_files_private_and_its_secrets_sealed(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_CLUSTER_KEY)  # `up`'s own place: DIR/cluster.key
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # as an older version left it
    (data / "node1.log").write_text("an older run's log\n")
    (data / "node1.log").chmod(0o644)
    with running_up(data, 1, users=2) as (process, out):
        assert process.poll() is None, out.read_text()
        assert mode(data) == 0o700
        database = data / "presence-ha.sqlite3"
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm"), data / "cluster.json",
                 data / "cluster.key", data / "node1.log", data / "node2.log", data / "haproxy.cfg",
                 data / "haproxy.log"]
        files += sorted((data / "tls").glob("*.key"))
        assert len(files) == 13, sorted((data / "tls").iterdir())
        assert {str(f): oct(mode(f)) for f in files} == {str(f): oct(0o600) for f in files}
        assert mode(data / "tls") == 0o700
        _assert_sealed(database, ClusterKey.load(data / "cluster.key"))

        code, status = presence_ha("ha", "status", "--json", "--data-dir", str(data))
        assert code == 0, status
        states = {n["name"]: (n["state"], n["alive"]) for g in json.loads(status)["groups"] for n in g["nodes"]}
        assert states == {"node1": ("Normal", True), "node2": ("Normal", True)}

        other = ClusterKey.create(tmp_path / "other" / "cluster.key")
        code, said = presence_ha("ha", "status", "--data-dir", str(data), "--cluster-key", str(other.path))
        assert code == 1 and f"the cluster key at {other.path} does not open this database's cluster-secret" in said
        code, said = presence_ha("ha", "web", "--data-dir", str(data), "--cluster-key", str(tmp_path / "none.key"))
        assert code == 1 and f"no cluster key at {tmp_path / 'none.key'}: copy cluster.key from" in said

        ports = _admin_ports(f"sqlite:///{database}")
        old = admin_token(_secret(database, ClusterKey.load(data / "cluster.key")))
        code, said = presence_ha("cluster", "rotate-secret", "--data-dir", str(data))
        assert code == 0, said
        assert "node node1: uses the new secret" in said and "node node2: uses the new secret" in said
        new = admin_token(_secret(database, ClusterKey.load(data / "cluster.key")))
        assert new != old
        assert {n: asyncio.run(admin_answer(p, n, old)) for n, p in ports.items()} == {"node1": 401, "node2": 401}
        assert {n: asyncio.run(admin_answer(p, n, new)) for n, p in ports.items()} == {"node1": 200, "node2": 200}
        _assert_sealed(database, ClusterKey.load(data / "cluster.key"))


def test_up_on_a_cluster_without_its_key_refuses_and_makes_no_other(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_CLUSTER_KEY)
    data = tmp_path / "data"
    assert presence_ha("db", "upgrade", "--data-dir", str(data))[0] == 0
    code, said = presence_ha("cluster", "init", "--name", "c", "--domain", DOMAIN, "--data-dir", str(data))
    assert code == 0 and f"sealed with the cluster key {data / 'cluster.key'}" in said, said
    (data / "cluster.key").rename(tmp_path / "kept-elsewhere.key")
    code, said = presence_ha("up", "--data-dir", str(data), "--service-port", "0")
    assert code == 1 and f"no cluster key at {data / 'cluster.key'}: copy cluster.key from" in said, said
    assert not (data / "cluster.key").exists()


def _admin_ports(url: str) -> dict[str, int]:
    return {n.name: n.ports.admin_port for n in db_call(url, nodes.list_nodes)}


def _secret(database: Path, key: ClusterKey) -> str:
    with sqlite3.connect(database) as conn:
        return key.open(conn.execute("SELECT secret FROM clusters").fetchone()[0], SECRET)


def _assert_sealed(database: Path, key: ClusterKey) -> None:
    """The clusters row holds sealed values only, and no file of the database holds them in clear."""
    with sqlite3.connect(database) as conn:
        stored_secret, stored_ca_key = conn.execute("SELECT secret, ca_key FROM clusters").fetchone()
    assert is_sealed(stored_secret) and is_sealed(stored_ca_key)
    secret, ca_key = key.open(stored_secret, SECRET), key.open(stored_ca_key, CA_KEY)
    for path in (database, Path(f"{database}-wal")):
        content = path.read_bytes()
        assert secret.encode() not in content, f"the cluster secret is in clear in {path}"
        assert b"PRIVATE KEY" not in content and ca_key.splitlines()[1].encode() not in content, path


# --- a running pair: rotation keeps its links and its clients -------------------------------


class Chat(slixmpp.ClientXMPP):
    """A slixmpp client that records the messages it gets and whether it was disconnected."""

    def __init__(self, user: str, password: str) -> None:
        super().__init__(f"{user}@{DOMAIN}/chat", password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.ready, self.got, self.drops = asyncio.Event(), [], 0
        self.add_event_handler("session_start", lambda _e: (self.send_presence(), self.ready.set()))
        self.add_event_handler("message", lambda m: self.got.append(m["body"]))
        self.add_event_handler("disconnected", lambda _e: setattr(self, "drops", self.drops + 1))

    async def online(self, cluster: Cluster, node: str) -> Chat:
        self.connect(host=cluster.node(node).host, port=cluster.node(node).client_port)
        await asyncio.wait_for(self.ready.wait(), DEADLINE_S)
        return self

    async def gets(self, body: str) -> None:
        await wait_until(lambda: body in self.got, DEADLINE_S, f"{self.boundjid} to get {body!r}; got {self.got}")


@pytest.fixture
def pair(tmp_path):
    cluster = start_ha_pair(f"sqlite:///{tmp_path / 'presence-ha.sqlite3'}", tmp_path, placement={"bob": "n2"})
    try:
        yield cluster
    finally:
        cluster.stop()


def _link_ups(cluster: Cluster) -> int:
    return sum(node.log().count(" up (restarted=") for node in cluster.nodes.values())


async def test_rotation_under_a_running_pair_keeps_links_and_clients(pair, tmp_path):
    ports = _admin_ports(pair.db_url)
    alice = await Chat("alice", pair.users["alice"]).online(pair, "n1")
    bob = await Chat("bob", pair.users["bob"]).online(pair, "n2")
    alice.send_message(mto=f"bob@{DOMAIN}/chat", mbody="before", mtype="chat")
    await bob.gets("before")
    old_secret = cluster_secret(pair.db_url)
    old, ups = admin_token(old_secret), _link_ups(pair)
    assert ups >= 2  # the mesh and the SRM links, each way
    browser = await asyncio.to_thread(page_session, ports["n1"], old)  # an admin logged in to the web page
    assert await asyncio.to_thread(overview_with, ports["n1"], browser) == 200

    said = await asyncio.to_thread(pair.cli, "cluster", "rotate-secret")
    assert "node n1: uses the new secret" in said and "node n2: uses the new secret" in said, said
    new_secret = cluster_secret(pair.db_url)
    assert new_secret != old_secret
    assert {n: await admin_answer(p, n, old) for n, p in ports.items()} == {"n1": 401, "n2": 401}
    assert {n: await admin_answer(p, n, admin_token(new_secret)) for n, p in ports.items()} == {"n1": 200, "n2": 200}
    assert await asyncio.to_thread(overview_with, ports["n1"], browser) == 401  # that session is void
    assert await asyncio.to_thread(peer_seen_live, ports["n1"], admin_token(new_secret), "n2")  # n1 asks n2 anew

    bob.send_message(mto=f"alice@{DOMAIN}/chat", mbody="after, from n2", mtype="chat")
    alice.send_message(mto=f"bob@{DOMAIN}/chat", mbody="after, from n1", mtype="chat")
    await alice.gets("after, from n2")
    await bob.gets("after, from n1")
    assert (alice.drops, bob.drops) == (0, 0)
    assert _link_ups(pair) == ups  # no link went down and up again
    assert ha_states(pair.db_url) == {"n1": ("Normal", "Normal"), "n2": ("Normal", "Normal")}
    for node in pair.nodes.values():
        assert "cluster secret rotated" in node.log() and "failed authentication" not in node.log(), node.log()

    # New links authenticate with the new secret only (last: the accepted one stands in for n2).
    refused, accepted = await _handshake(pair, tmp_path, old_secret), await _handshake(pair, tmp_path, new_secret)
    assert (refused, accepted) == ("refused", "up")
    for client in (alice, bob):
        client.disconnect()


async def _handshake(cluster: Cluster, tmp_path: Path, secret: str) -> str:
    """Dial n1's link port as n2 (its certificate from the cluster CA) with `secret`."""
    ca = cluster_ca(cluster.db_url)
    where = tmp_path / f"probe-{secret[:6]}"
    where.mkdir()
    tls = link_tls(*ensure_link_certificate(where, "n2", ca), ca[0])
    port = db_call(cluster.db_url, lambda session: nodes.get_node(session, "n1")).ports.link_port
    downs: list = []
    options = LinkOptions(heartbeat_interval_s=0.2, dead_after_s=3, handshake_timeout_s=3, connect_timeout_s=3,
                          backoff_initial_s=0.5, backoff_max_s=1)
    client = LinkClient(LinkConfig("n2", secret.encode(), os.urandom(16)), "n1", "127.0.0.1", port,
                        on_frame=lambda *_: None, rng=random.Random(1), on_down=downs.append, options=options, tls=tls)
    client.start()
    try:
        await wait_until(lambda: client.is_up or any(isinstance(d, LinkRejected) for d in downs), DEADLINE_S,
                         f"the handshake with n1 to end; downs {downs}")
        return "up" if client.is_up else "refused"
    finally:
        await client.close()
