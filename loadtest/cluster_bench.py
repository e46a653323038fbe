"""Cluster benchmark: same-node vs cross-node messaging, and presence fan-out.

Rules: it drives a running cluster (`presence-ha up --nodes 4 --users 40 --data-dir D`)
with the raw `loadtest.xmpp_client` clients, each logged in on the node that serves
its user (read from the database named in `D/cluster.json`). Senders and receivers
run in this one process, so one clock stamps both ends. Nothing here asserts on time.
    .venv/bin/python -m presence_ha.loadtest.cluster_bench --cluster D/cluster.json
Phases, each for same-node and cross-node (other group) pairs:
1. latency: one message at a time, wait for it to arrive (p50, p95, p99);
2. throughput: `--pairs` pairs each send `--burst` messages at once; messages/s
   from the first send to the last arrival. With `--repeat N` both phases run N
   times, same and cross alternating, so a noisy (shared) machine hits both alike;
   latency samples are pooled, throughput is the median of the N runs;
3. presence fan-out: a user with `--contacts` subscribed contacts (all on its node,
   or spread over every node) changes its status; time until every contact saw it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from presence_ha.db import users as db_users
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.loadtest.xmpp_client import ClientConfig, XmppClient, local_tag

_ENDED: dict[str, str] = {}  # user -> why its stream ended (a benchmark stream must not end)
_WAITING: set[Peer] = set()  # peers a `wait_for` is waiting on


@dataclass(eq=False)
class Peer:
    """A logged-in user and what it received (body or status -> arrival time)."""

    username: str
    node: str
    client: XmppClient | None = None
    arrivals: dict[str, float] = field(default_factory=dict)
    events: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False

    @property
    def session(self) -> XmppClient:
        """The logged-in client."""
        assert self.client is not None, f"{self.username} is not logged in"
        return self.client

    def on_closed(self, reason: str) -> None:
        if self.closing:
            return  # we ended it
        _ENDED.setdefault(self.username, reason)
        for peer in _WAITING:
            peer.events.set()

    def on_stanza(self, elem: ET.Element) -> None:
        tag = local_tag(elem)
        text = elem.findtext("{jabber:client}body") if tag == "message" else None
        if tag == "presence" and elem.get("type") is None:
            text = elem.findtext("{jabber:client}status")
        if text:
            self.arrivals[text] = time.perf_counter()
            self.events.set()

    async def wait_for(self, key: str, timeout_s: float = 30.0) -> float:
        deadline = time.perf_counter() + timeout_s
        _WAITING.add(self)
        try:
            while key not in self.arrivals:
                if _ENDED:
                    who, why = next(iter(_ENDED.items()))
                    raise SystemExit(f"{who}'s stream ended during the benchmark ({why}); a stream that sends "
                                     "more than the server's per-connection rate limit is ended: "
                                     "use fewer --repeat or --burst")
                self.events.clear()
                await asyncio.wait_for(self.events.wait(), max(0.001, deadline - time.perf_counter()))
        finally:
            _WAITING.discard(self)
        return self.arrivals[key]

    async def close(self) -> None:
        self.closing = True
        await self.session.close()


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


async def locations(db_url: str) -> dict[str, str]:
    engine = make_engine(db_url)
    try:
        async with make_session_factory(engine)() as session:
            return {u.username: u.active_node for u in await db_users.list_users(session) if u.active_node}
    finally:
        await engine.dispose()


async def login(spec: dict, peer: Peer, passwords: dict[str, str]) -> Peer:
    node = next(n for n in spec["nodes"] if n["name"] == peer.node)
    config = ClientConfig(node["host"], node["client_port"], spec["domain"], peer.username,
                          passwords[peer.username], resource="bench", tls=True)
    peer.client = XmppClient(config, on_stanza=peer.on_stanza)
    peer.client.on_closed = peer.on_closed
    await peer.client.login()
    peer.session.send_presence()
    return peer


def choose_pairs(where: dict[str, str], count: int, cross: bool, used: set[str]) -> list[tuple[str, str]]:
    """`count` (sender, receiver) pairs on one node, or on nodes of different groups."""
    by_node: dict[str, list[str]] = defaultdict(list)
    for user, node in sorted(where.items()):
        if user not in used:
            by_node[node].append(user)
    nodes = sorted(by_node)
    pairs: list[tuple[str, str]] = []
    for i in range(count):
        a = nodes[i % len(nodes)]
        b = nodes[(i + len(nodes) // 2) % len(nodes)] if cross else a  # nodeK and nodeK+N/2: other group
        if not by_node[a] or not by_node[b] or (a == b and len(by_node[a]) < 2):
            kind = "cross" if cross else "same"
            raise SystemExit(f"not enough users for {count} {kind}-node pairs: use more --users")
        pairs.append((by_node[a].pop(), by_node[b].pop()))
    used.update(u for pair in pairs for u in pair)
    return pairs


async def latency(sender: Peer, receiver: Peer, count: int, tag: str) -> list[float]:
    samples = []
    for i in range(count):
        key = f"{tag}-lat-{i}"
        start = time.perf_counter()
        sender.session.send_message(f"{receiver.username}@{sender.session.config.domain}", key)
        samples.append(await receiver.wait_for(key) - start)
    return samples


async def throughput(pairs: list[tuple[Peer, Peer]], burst: int, tag: str) -> float:
    start = time.perf_counter()
    for sender, receiver in pairs:
        to = f"{receiver.username}@{sender.session.config.domain}"
        for i in range(burst):
            sender.session.send_message(to, f"{tag}-tp-{sender.username}-{i}")
        await asyncio.sleep(0)
    ends = await asyncio.gather(*(r.wait_for(f"{tag}-tp-{s.username}-{burst - 1}", 120) for s, r in pairs))
    missing = sum(1 for s, r in pairs for i in range(burst) if f"{tag}-tp-{s.username}-{i}" not in r.arrivals)
    if missing:
        raise SystemExit(f"{missing} messages missing after the last one arrived")
    return len(pairs) * burst / (max(ends) - start)


async def subscribe_all(hub: Peer, contacts: list[Peer]) -> None:
    """Each contact subscribes to the hub's presence; the hub approves (RFC 6121 §3)."""
    domain = hub.session.config.domain
    for contact in contacts:
        contact.session.send_presence(f"{hub.username}@{domain}", "subscribe")
    await asyncio.sleep(0.5)
    for contact in contacts:
        hub.session.send_presence(f"{contact.username}@{domain}", "subscribed")


async def fan_out(hub: Peer, contacts: list[Peer], rounds: int, tag: str) -> list[float]:
    """Seconds until the last contact saw each of `rounds` status changes."""
    await subscribe_all(hub, contacts)
    await asyncio.sleep(1.0)
    spans = []
    for i in range(rounds):
        key = f"{tag}-fan-{i}"
        start = time.perf_counter()
        hub.session.send_presence(status=key)
        ends = await asyncio.gather(*(c.wait_for(key) for c in contacts))
        spans.append(max(ends) - start)
    return spans


def report(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (f"{name:<34} p50 {pct(ms, 50):7.2f} ms   p95 {pct(ms, 95):7.2f} ms   "
            f"p99 {pct(ms, 99):7.2f} ms   n={len(ms)}")


async def run(args: argparse.Namespace) -> dict:
    spec = json.loads(Path(args.cluster).read_text())  # noqa: ASYNC240 -- once, before any client
    passwords = {u["username"]: u["password"] for u in spec["users"]}
    where = {u: n for u, n in (await locations(spec["database_url"])).items() if u in passwords}
    used: set[str] = set()
    groups = {"same": choose_pairs(where, args.pairs, False, used),
              "cross": choose_pairs(where, args.pairs, True, used)}
    peers = {u: Peer(u, where[u]) for pairs in groups.values() for pair in pairs for u in pair}
    await asyncio.gather(*(login(spec, p, passwords) for p in peers.values()))
    result: dict = {f"{kind}_{what}": [] for kind in groups for what in ("latency", "throughputs")}
    kinds = [kind for kind in groups if args.only in (None, kind)]
    for rep in range(args.repeat):
        for kind in kinds:
            pairs, tag = groups[kind], f"{kind}{rep}"
            first = pairs[0]
            result[f"{kind}_latency"] += await latency(peers[first[0]], peers[first[1]], args.count, tag)
            result[f"{kind}_throughputs"].append(
                await throughput([(peers[a], peers[b]) for a, b in pairs], args.burst, tag))
    for kind in kinds:
        result[f"{kind}_throughput"] = statistics.median(result[f"{kind}_throughputs"])
    if args.only is None and args.rounds:
        result.update(await fan_out_phase(spec, where, used, passwords, args))
    for peer in list(peers.values()):
        await peer.close()
    return result


async def fan_out_phase(spec: dict, where: dict[str, str], used: set[str], passwords: dict[str, str],
                        args: argparse.Namespace) -> dict:
    free = [u for u in sorted(where) if u not in used]
    hub_name = free.pop(0)
    local = [u for u in free if where[u] == where[hub_name]][: args.contacts]
    spread = [u for u in free if u not in local][: args.contacts]
    hub = await login(spec, Peer(hub_name, where[hub_name]), passwords)
    out: dict[str, object] = {}
    for kind, names in (("local", local), ("spread", spread)):
        contacts = list(await asyncio.gather(*(login(spec, Peer(u, where[u]), passwords) for u in names)))
        out[f"fanout_{kind}"] = await fan_out(hub, contacts, args.rounds, kind)
        out[f"fanout_{kind}_nodes"] = sorted({c.node for c in contacts})
        for contact in contacts:
            await contact.close()
    await hub.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True, help="cluster.json written by `presence-ha up`")
    parser.add_argument("--count", type=int, default=300, help="latency samples per kind")
    parser.add_argument("--pairs", type=int, default=4, help="concurrent pairs in the throughput phase")
    parser.add_argument("--burst", type=int, default=2000, help="messages per pair in the throughput phase")
    parser.add_argument("--contacts", type=int, default=8, help="contacts in the fan-out phase")
    parser.add_argument("--rounds", type=int, default=50, help="status changes in the fan-out phase (0: skip)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating same/cross runs of phases 1 and 2")
    parser.add_argument("--only", choices=("same", "cross"), help="run phases 1 and 2 for one kind only "
                        "(for profiling the nodes); no fan-out phase")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    kinds = [kind for kind in ("same", "cross") if args.only in (None, kind)]
    for kind in kinds:
        print(report(f"{kind}-node message latency", result[f"{kind}_latency"]))
    for kind in kinds:
        runs = " ".join(f"{t:.0f}" for t in result[f"{kind}_throughputs"])
        print(f"{kind + '-node throughput':<34} {result[f'{kind}_throughput']:9.0f} msg/s (median of: {runs})")
    for kind in ("local", "spread") if "fanout_local" in result else ():
        print(report(f"fan-out to {args.contacts} ({kind}: {','.join(result[f'fanout_{kind}_nodes'])})",
                     result[f"fanout_{kind}"]))
    if args.only is not None:
        return
    same, cross = pct(result["same_latency"], 50), pct(result["cross_latency"], 50)
    print(f"cross/same p50 latency: {cross / same:.2f}x (target <= 2x); "
          f"cross/same throughput: {result['cross_throughput'] / result['same_throughput']:.0%} (target >= 80%)")


if __name__ == "__main__":
    main()
