"""Quota abuse against a real node (issue #19 item 7): each attack runs from 127.0.0.1
as an authenticated user (mallory is alice); meanwhile a normal client from another
address (127.0.0.2) logs in and gets a message through within 1 s, what the attack
leaves stored stays within its quota, and the node's RSS grows by less than 20 MB.

- Roster: items of 200 kB (not-acceptable), more items than the roster holds
  (not-allowed), subscriptions to made-up local JIDs (answered unsubscribed, nothing
  stored) and to remote ones on a full roster (not-allowed). On both databases.
- Offline storage: 60 messages of 200 kB to an offline user; what fits in 1 MB is
  kept, the rest bounces with service-unavailable. On both databases.
- Sessions: 30 binds of one account; beyond 10 resources, resource-constraint, while
  rebinding a held resource still replaces it, and a session awaiting XEP-0198
  resumption gives its place.

The per-connection rate limit is raised so that the quotas, not the rate limit, are
what stops each attack (the rate limit has its own tests).
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from sqlalchemy import func, select

from presence_ha.db.models import OfflineMessage, RosterItem, User
from tests.integration.cluster import (  # noqa: F401
    DOMAIN,
    FAST_LIMITS,
    RawClient,
    cluster_factory,
    db_call,
    wait_until,
)
from tests.integration.test_node_login_abuse import (
    ATTACKER,
    RSS_GROWTH_MB,
    SERVED_WITHIN_S,
    connect_from,
    normal_client_served,
    rss_mb,
    witness_of,
)

USERS = (("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw"), ("dave", "dave-pw"))
FAST_INPUT = ("limits.rate_bytes_per_s=50000000", "limits.rate_burst_bytes=50000000")
ROSTER_MAX = 200
BIG = 200_000  # bytes of one attack stanza's payload


def start_node(cluster_factory, *sets: str):  # noqa: F811
    return cluster_factory(nodes=1, users=USERS, sets=(*FAST_LIMITS, *FAST_INPUT, *sets)).node("n1")


async def answers_until_done(client: RawClient) -> list[str]:
    """Every stanza the client gets until the answer to a ping sent now (the answers to
    everything sent before it come first, in order)."""
    await client.send("<iq type='get' id='done'><ping xmlns='urn:xmpp:ping'/></iq>")
    deadline = time.monotonic() + 120
    while (end := client.buffer.find("id='done'")) < 0:  # (a regex from the start would be quadratic here)
        chunk = await asyncio.wait_for(client.reader.read(1 << 20), deadline - time.monotonic())
        if not chunk:
            raise ConnectionError(f"closed before the answer to 'done'; got {client.buffer[-2000:]!r}")
        client.buffer += chunk.decode(errors="replace")
    text, client.buffer = client.buffer[:end], ""
    return re.findall(r"<(?:iq|presence|message) [^>]*?(?:/>|>.*?</(?:iq|presence|message)>)", text, re.S)


def tally(stanzas: list[str]) -> dict[str, int]:
    """`{'<id prefix> <outcome>': count}`: outcome is the error condition, or the type."""
    found: dict[str, int] = {}
    for stanza in stanzas:
        ident = re.search(r" id='([a-z]+)", stanza) or re.search(r" from='([a-z]+)", stanza)
        error = re.search(r"<error[^>]*><([a-z-]+)", stanza)
        kind = re.search(r" type='([a-z]+)'", stanza)
        key = f"{ident.group(1) if ident else '?'} {error.group(1) if error else kind.group(1) if kind else '-'}"
        found[key] = found.get(key, 0) + 1
    return found


async def attack_while_served(node, witness: RawClient, attack, body: str) -> tuple[object, float, float]:
    """Run `attack(stop)` (a coroutine function that keeps attacking until `stop` is set);
    meanwhile time a normal client's login and message, then stop the attack. Returns
    (the attack's result, that time, RSS growth in MB)."""
    before = rss_mb(node)
    stop = asyncio.Event()
    running = asyncio.ensure_future(attack(stop))
    try:
        await asyncio.sleep(0.2)
        took = await normal_client_served(node, witness, body)
        assert not running.done(), "the attack ended before the normal client was served"
        stop.set()
        result = await asyncio.wait_for(running, 120)
    finally:
        running.cancel()
    return result, took, rss_mb(node) - before


async def pushing(client: RawClient, stop: asyncio.Event, make_round) -> int:
    """Send `make_round(n)` (the n-th round of stanzas) until `stop`; how many rounds."""
    rounds = 0
    while not stop.is_set():
        await client.send(make_round(rounds))
        rounds += 1
        await asyncio.sleep(0)  # the client's own loop runs the normal client too
    return rounds


def detached(node) -> float:
    """Sessions awaiting XEP-0198 resumption on the node (its JsmSessionsComposed gauge)."""
    return sum(v for k, v in node.metrics().items() if k.split("{")[0] == "jsm_sessions_composed")


def roster_rows(db_url: str, username: str) -> int:
    async def read(session):
        stmt = select(func.count()).select_from(RosterItem).join(User, User.id == RosterItem.user_id)
        return (await session.execute(stmt.where(User.username == username))).scalar_one()
    return db_call(db_url, read)


def offline_stored(db_url: str, username: str) -> tuple[int, int]:
    """(messages, their bytes) stored for `username`."""
    async def read(session):
        stmt = (select(func.count(), func.coalesce(func.sum(func.length(OfflineMessage.stanza)), 0))
                .join(User, User.id == OfflineMessage.user_id).where(User.username == username))
        count, size = (await session.execute(stmt)).one()
        return int(count), int(size)
    return db_call(db_url, read)


def big_item(i: int) -> str:
    groups = "".join(f"<group>{'g' * 1000}{n}</group>" for n in range(BIG // 1000))
    return (f"<iq type='set' id='big{i}'><query xmlns='jabber:iq:roster'><item jid='big{i}@elsewhere.example'>"
            f"{groups}</item></query></iq>")


def item(i: int, prefix: str = "it") -> str:
    return (f"<iq type='set' id='{prefix}{i}'><query xmlns='jabber:iq:roster'><item jid='c{i}@elsewhere.example' "
            f"name='contact {i}'><group>Friends</group></item></query></iq>")


def roster_round(n: int) -> str:
    """What the roster attack sends again and again, once the roster is full: an item of
    200 kB, new items, subscriptions to made-up local JIDs and to remote ones."""
    base = ROSTER_MAX + 10 * n
    return (big_item(n) + "".join(item(base + i, "over") for i in range(10))
            + "".join(f"<presence type='subscribe' to='ghost{base + i}@{DOMAIN}'/>" for i in range(30))
            + "".join(f"<presence type='subscribe' to='far{base + i}@elsewhere.example' id='far{i}'/>"
                      for i in range(10)))


def roster_attack(mallory: RawClient):
    async def attack(stop: asyncio.Event) -> tuple[int, dict[str, int]]:
        await mallory.send("".join(item(i) for i in range(ROSTER_MAX)))  # fills the roster
        rounds = await pushing(mallory, stop, roster_round)
        return rounds, tally(await answers_until_done(mallory))
    return attack


@pytest.mark.timeout(180)
async def test_roster_abuse_is_bounded_by_the_roster_quotas(cluster_factory, db_url):  # noqa: F811
    node = start_node(cluster_factory, f"quotas.roster_max_items={ROSTER_MAX}")
    witness = await witness_of(node)
    mallory = await connect_from(node, ATTACKER)
    try:
        await mallory.login("alice", "alice-pw", resource="mallory")
        (rounds, answers), took, growth = await attack_while_served(node, witness, roster_attack(mallory),
                                                                    "through-rosters")
    finally:
        mallory.close()
        witness.close()
    rows = roster_rows(db_url, "alice")
    print(f"\nroster attack: {rounds} rounds; answers {answers}; rows stored {rows}; "
          f"normal client served in {took:.3f}s; RSS +{growth:.1f} MB")
    assert rounds >= 1
    assert answers == {"it result": ROSTER_MAX, "big not-acceptable": rounds, "over not-allowed": 10 * rounds,
                       "ghost unsubscribed": 30 * rounds, "far not-allowed": 10 * rounds}
    assert rows == ROSTER_MAX  # nothing for the 200 kB items, the ghosts, the far ones
    assert took < SERVED_WITHIN_S, f"normal login + message took {took:.2f}s"
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.1f} MB"


def offline_attack(mallory: RawClient):
    body = "x" * BIG

    async def attack(stop: asyncio.Event) -> tuple[int, dict[str, int]]:
        sent = await pushing(mallory, stop, lambda n: f"<message to='dave@{DOMAIN}' type='chat' id='m{n}'>"
                                                      f"<body>{body}</body></message>")
        return sent, tally(await answers_until_done(mallory))
    return attack


@pytest.mark.timeout(180)
async def test_offline_flood_is_bounded_by_the_offline_quota(cluster_factory, db_url):  # noqa: F811
    node = start_node(cluster_factory)  # the default quota: 1 MB, 200 messages
    witness = await witness_of(node)
    mallory = await connect_from(node, ATTACKER)
    try:
        await mallory.login("alice", "alice-pw", resource="mallory")
        (sent, answers), took, growth = await attack_while_served(node, witness, offline_attack(mallory),
                                                                  "past-the-flood")
    finally:
        mallory.close()
        witness.close()
    count, size = offline_stored(db_url, "dave")
    print(f"\noffline flood: {sent} x 200 kB; answers {answers}; stored {count} ({size} bytes); "
          f"normal client served in {took:.3f}s; RSS +{growth:.1f} MB")
    assert sent > 5 and count == 5 and size <= 1024 * 1024  # 5 fit in 1 MB
    assert answers == {"m service-unavailable": sent - 5}
    assert took < SERVED_WITHIN_S, f"normal login + message took {took:.2f}s"
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.1f} MB"
    dave = await connect_from(node, "127.0.0.3")
    try:
        await dave.login("dave", "dave-pw")
        await dave.send("<presence/>")
        for _ in range(5):
            await dave.expect(r"<message [^>]*>.*?Offline Storage</delay></message>")
    finally:
        dave.close()
    assert offline_stored(db_url, "dave") == (0, 0)


async def bind(client: RawClient, resource: str) -> str:
    """STARTTLS, PLAIN as alice, bind `resource`: 'bound' or the bind error's condition."""
    await client.starttls()
    assert await client.auth_plain("alice", "alice-pw") == "success"
    await client.open_stream()
    await client.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                      f"<resource>{resource}</resource></bind></iq>")
    answer = (await client.expect(r"<iq [^>]*id='bind'[^>]*>.*?</iq>")).group(0)
    if "type='result'" in answer:
        return "bound"
    condition = re.search(r"<error[^>]*><([a-z-]+)", answer)
    return condition.group(1) if condition else answer


def session_attack(node, clients: list[RawClient]):
    async def attack(stop: asyncio.Event) -> list[str]:
        outcomes = []
        while not stop.is_set() or len(clients) < 30:
            client = await connect_from(node, ATTACKER)
            clients.append(client)
            outcomes.append(await bind(client, f"r{len(clients) - 1}"))
        return outcomes
    return attack


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the quota is the node's, not its database's
@pytest.mark.timeout(120)
async def test_sessions_of_one_account_are_bounded(cluster_factory):  # noqa: F811
    node = start_node(cluster_factory, "quotas.max_sessions_per_user=10")
    witness = await witness_of(node)
    clients: list[RawClient] = []
    try:
        outcomes, took, growth = await attack_while_served(node, witness, session_attack(node, clients), "sessions")
        assert outcomes == ["bound"] * 10 + ["resource-constraint"] * (len(outcomes) - 10)
        again = await connect_from(node, ATTACKER)
        clients.append(again)
        assert await bind(again, "r3") == "bound"  # a held resource is replaced, not refused
        assert await clients[3].stream_error() == "conflict"
        refused = clients[15]  # a refused bind leaves the stream open: it may try again
        await refused.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                           "<resource>r4</resource></bind></iq>")
        await refused.expect(r"<iq [^>]*id='bind'[^>]*type='result'|<iq [^>]*type='result'[^>]*id='bind'")
        # a session that lost its connection and awaits XEP-0198 resumption gives its place
        phone = clients[5]
        await phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        await phone.expect(r"<enabled [^>]*resume='true'")
        phone.close()
        await wait_until(lambda: detached(node) == 1, 10, "the phone detached")
        fresh = await connect_from(node, ATTACKER)
        clients.append(fresh)
        assert await bind(fresh, "fresh") == "bound"
        assert detached(node) == 0
        late = await connect_from(node, ATTACKER)
        clients.append(late)
        assert await bind(late, "late") == "resource-constraint"  # no detached session left
    finally:
        for client in clients:
            client.close()
        witness.close()
    print(f"\n{len(outcomes)} binds of one account: {outcomes.count('bound')} bound, "
          f"{outcomes.count('resource-constraint')} refused; normal client served in {took:.3f}s; RSS +{growth:.1f} MB")
    assert took < SERVED_WITHIN_S, f"normal login + message took {took:.2f}s"
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.1f} MB"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_relayed_session_counts_where_it_is_served(db_url, tmp_path):
    """alice is served by n2 (another group); two sessions there fill her quota of 2, so
    a third one relayed through n1 is refused by n2: n1 ends its stream (`reset`, with
    the quota's text: the link protocol carries a reason, not a condition)."""
    from tests.integration.cluster import Cluster, NodeProcess
    from tests.integration.test_cluster_im import password, provision_groups

    placement = {"alice": "n2", "bob": "n1"}
    ports = provision_groups(db_url, tmp_path, placement, {"g1": ("n1",), "g2": ("n2",)})
    sets = (*FAST_LIMITS, "quotas.max_sessions_per_user=2")
    procs = {name: NodeProcess(name, p[0], p[4], tmp_path, db_url, sets) for name, p in ports.items()}
    cluster = Cluster(db_url, DOMAIN, tmp_path, procs, {u: password(u) for u in placement})
    clients: list[RawClient] = []
    try:
        for proc in procs.values():
            proc.start()
        for i in range(2):
            clients.append(await connect_from(procs["n2"], ATTACKER))
            await clients[-1].login("alice", password("alice"), resource=f"direct{i}")
        relayed = await connect_from(procs["n1"], ATTACKER)
        clients.append(relayed)
        await relayed.login("alice", password("alice"), resource="relayed")
        assert await relayed.stream_error() == "reset"
        await relayed.closed()
        assert "limit of 2 connected resources" in relayed.buffer
    finally:
        for client in clients:
            client.close()
        cluster.stop()
