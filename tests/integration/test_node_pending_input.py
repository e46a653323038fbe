"""Issue #19 items 1 and 5 against a real node process: endless stream headers, endless
tags before and after authentication, and 80,000 namespace declarations.

Each scenario runs the attack from 127.0.0.1 while a normal client from 127.0.0.2 logs
in and sends bob a message, and checks the bounds: every attacking connection ends with a
policy-violation naming the limit, the node's RSS (/proc/PID/status) grows by less than
20 MB, its CPU per refused connection stays small (/proc/PID/stat), and a normal login
plus message is delivered within 1 s (on a loaded machine: within 1 s of the same
login's time before the attack, medians).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import re
import statistics
import time
from pathlib import Path

import pytest

from tests.integration.cluster import (  # noqa: F401
    DOMAIN,
    FAST_LIMITS,
    NodeProcess,
    RawClient,
    cluster_factory,
)

# The attacks are on the node's parser, not on its database: SQLite only (the other
# integration tests run every database path on PostgreSQL too).
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

ATTACK_S = 4.0  # how long the attackers keep reconnecting
RSS_GROWTH_MAX_KB = 20 * 1024
SERVED_WITHIN_S = 1.0
# The node's CPU per refused attacking connection (an endless tag used to cost it without
# bound); after authentication it includes the attacker's login (TLS, PLAIN).
CPU_PER_REFUSAL_MAX_MS = {"tag-after-auth": 300.0}
CPU_PER_REFUSAL_MAX_MS_BEFORE_AUTH = 30.0
ATTACKERS = 10
RECONNECT_PAUSE_S = 0.1
# the limits under test keep their defaults; the rate limit is the default too
LIMITS = (*FAST_LIMITS, "limits.auth_timeout_s=10")
HEADER_START = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"


def cpu_s(node: NodeProcess) -> float:
    """The node's CPU time so far (utime + stime, /proc/PID/stat)."""
    assert node.process is not None
    fields = Path(f"/proc/{node.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(node: NodeProcess) -> int:
    assert node.process is not None
    status = Path(f"/proc/{node.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


async def connect_from(node: NodeProcess, address: str) -> RawClient:
    reader, writer = await asyncio.open_connection(node.host, node.client_port, local_addr=(address, 0))
    return RawClient(reader, writer, DOMAIN)


async def refused(client: RawClient, opening: str, filler: str, limit: int, limit_text: str) -> None:
    """Send `opening`, then `filler` until just past `limit` bytes (the node cannot tell
    this from an endless tag; stopping there lets the node read all of it, so its close
    is a FIN, not a reset that would drop its answer before the attacker reads it);
    check the stream error."""
    sent = 0
    try:
        await client.send(opening)
        sent = len(opening)
        while sent <= limit:
            await client.send(filler)
            sent += len(filler)
        match = await client.expect(r"<stream:error><([a-z-]+)[^>]*/>(?:<text[^>]*>([^<]*)</text>)?", timeout=10)
        if match.groups() != ("policy-violation", limit_text):  # not `assert`: it also runs in another process
            raise AssertionError(f"stream error {match.groups()}, not policy-violation {limit_text!r}")
        await client.expect(r"</stream:stream>")
        if not await client.closed():
            raise AssertionError("the node did not close the connection")
    except ConnectionError as exc:
        raise AssertionError(f"connection lost after {sent} bytes: {exc}") from exc
    finally:
        client.close()


class Witness:
    """bob, logged in before the attack; `served()` times a login from 127.0.0.2 plus a
    message to bob until bob has it."""

    def __init__(self, node: NodeProcess, bob: RawClient) -> None:
        self.node, self.bob, self.times = node, bob, []

    async def served(self, n: int) -> None:
        started = time.monotonic()
        alice = await connect_from(self.node, "127.0.0.2")
        try:
            await alice.login("alice", "alice-pw", resource=f"normal{n}")
            await alice.send(f"<message to='bob@{DOMAIN}' type='chat' id='m{n}'><body>hello {n}</body></message>")
            await self.bob.expect(rf"<body>hello {n}</body>", timeout=10)
        finally:
            alice.close()
        self.times.append(time.monotonic() - started)


ATTACKS = {
    # kind: (what the attacker does before, opening, filler, limit, the error's text)
    "header": (None, HEADER_START + " a='", "x" * 512, 4096, "stream header larger than 4096 bytes"),
    "tag-before-auth": ("open", "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls' a='", "y>" * 256, 4096,
                        "tag larger than 4096 bytes"),
    "tag-after-auth": ("login", f"<message to='bob@{DOMAIN}' a='", "z" * 1024, 16384, "tag larger than 16384 bytes"),
    # the first 40 of 80,000 declarations: the node counts them as they arrive
    "namespaces": (None, HEADER_START + "".join(f" xmlns:n{i}='urn:n{i}'" for i in range(40)), "", 0,
                   "more than 16 namespace declarations on the stream header"),
}


async def _attack_once(host: str, port: int, kind: str, n: int) -> None:
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.1", 0))
    client = RawClient(reader, writer, DOMAIN)
    before, opening, filler, limit, text = ATTACKS[kind]
    if before == "open":
        await client.open_stream()
    elif before == "login":
        # an account of its own per attacker: logins of one account in flight at once are
        # throttled (issue #19 item 3), and the witness's account must stay untouched
        await client.login(f"mallory{n}", "mallory-pw")
    await refused(client, opening, filler, limit, text)


async def _attackers(host: str, port: int, kind: str, duration_s: float) -> int:
    refusals = 0
    setup_failures: list[str] = []
    deadline = time.monotonic() + duration_s

    async def attacker(n: int) -> None:
        nonlocal refusals
        mine = 0
        # each attacker is refused at least once, even where logins take seconds (30 s at most)
        while time.monotonic() < deadline or (not mine and time.monotonic() < deadline + 30):
            try:
                await _attack_once(host, port, kind, n)
            except ConnectionError as exc:  # lost while logging in (`refused` turns its own into AssertionError)
                setup_failures.append(repr(exc))
                continue
            refusals += 1
            mine += 1
            # Reconnect after a pause: 10 attackers stay under ~100 connections/s. A faster
            # churn from one address (~460/s on an idle machine) is a connection flood
            # (issue #19 item 2, per-address limits), and grew the node's RSS by 25-38 MB.
            await asyncio.sleep(RECONNECT_PAUSE_S)

    await asyncio.gather(*(attacker(n) for n in range(ATTACKERS)))
    if setup_failures:
        print(f"{kind}: {len(setup_failures)} attacking connections lost before their attack: {setup_failures[:3]}")
    return refusals


def attack_process(host: str, port: int, kind: str, duration_s: float) -> int:
    """The attackers' own process (another host, in effect): refusals seen, or the failure."""
    return asyncio.run(_attackers(host, port, kind, duration_s))


async def under_attack(node: NodeProcess, witness: Witness, kind: str) -> int:
    """ATTACKERS connections from 127.0.0.1 (another process) run attack `kind`, each
    reconnecting for ATTACK_S, while the witness logs in from 127.0.0.2 again and again;
    return how many attacks the node refused."""
    for n in range(3):
        await witness.served(n)
    baseline = [round(t, 3) for t in witness.times]
    witness.times.clear()
    rss_before = peak = rss_kb(node)
    cpu_before = cpu_s(node)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0)  # the process is up
        attack = asyncio.get_running_loop().run_in_executor(pool, attack_process, node.host, node.client_port,
                                                            kind, ATTACK_S)
        n = 3
        while not attack.done():
            peak = max(peak, rss_kb(node))
            await witness.served(n)
            n += 1
            peak = max(peak, rss_kb(node))
            await asyncio.sleep(0.1)
        refusals = await attack
    peak = max(peak, rss_kb(node))
    cpu_per_refusal_ms = (cpu_s(node) - cpu_before) / max(refusals, 1) * 1000
    print(f"{kind}: refusals={refusals} node_cpu_per_refusal_ms={cpu_per_refusal_ms:.2f} rss_before_kb={rss_before} "
          f"rss_peak_kb={peak} served_s_before={baseline} "
          f"served_s_under_attack={[round(t, 3) for t in witness.times]}")
    assert peak - rss_before < RSS_GROWTH_MAX_KB, f"RSS grew from {rss_before} to {peak} kB"
    # Under SERVED_WITHIN_S on a quiet machine (a login there takes ~0.05 s). On a shared,
    # loaded one (load average 20 on 2 cores here) a login alone takes up to 1.5 s, so the
    # median login under attack must stay within SERVED_WITHIN_S plus twice the median
    # before it (the machine's own slowness taken out).
    assert witness.times, "the witness was never served"
    slack = 2 * statistics.median(baseline)  # ~0.1 s on a quiet machine
    assert statistics.median(witness.times) < SERVED_WITHIN_S + slack, (baseline, witness.times)
    # the node's CPU (all of it: the witness, accepts, TLS) per refused attacking connection
    assert cpu_per_refusal_ms < CPU_PER_REFUSAL_MAX_MS.get(kind, CPU_PER_REFUSAL_MAX_MS_BEFORE_AUTH)
    assert node.alive()
    return refusals


@pytest.fixture
async def node(cluster_factory):  # noqa: F811
    users = [("alice", "alice-pw"), ("bob", "bob-pw")] + [(f"mallory{n}", "mallory-pw") for n in range(ATTACKERS)]
    cluster = cluster_factory(nodes=1, sets=LIMITS, users=users)
    yield cluster.node("n1")
    log = cluster.node("n1").log()
    print("\n".join(line for line in log.splitlines() if " WARNING " in line or " ERROR " in line)[-3000:])
    assert "Traceback" not in log


@pytest.fixture
async def witness(node):
    bob = await RawClient.connect(node)
    await bob.login("bob", "bob-pw", resource="witness")
    await bob.send("<presence/>")  # available: messages to bob's bare JID reach this resource
    yield Witness(node, bob)
    bob.close()


@pytest.mark.timeout(300)  # two node starts and 4 s of attack take over 120 s on a loaded machine
@pytest.mark.parametrize("kind", list(ATTACKS))
async def test_pending_input_attack(node, witness, kind):
    assert await under_attack(node, witness, kind) >= ATTACKERS


@pytest.mark.timeout(300)
async def test_namespace_declarations_are_counted_when_the_header_may_be_large(cluster_factory):  # noqa: F811
    wide = (*LIMITS, "limits.max_header_bytes=4000000", "limits.rate_burst_bytes=4000000")
    node = cluster_factory(nodes=1, sets=wide).node("n1")
    header = HEADER_START + "".join(f" xmlns:n{i}='urn:n{i}'" for i in range(80_000)) + f" to='{DOMAIN}' version='1.0'>"
    rss_before = rss_kb(node)
    started = time.monotonic()
    for _ in range(3):
        client = await RawClient.connect(node)
        await client.send(header)
        match = await client.expect(r"<stream:error><([a-z-]+)[^>]*/>(?:<text[^>]*>([^<]*)</text>)?", timeout=10)
        assert match.groups() == ("policy-violation", "more than 16 namespace declarations on the stream header")
        assert await client.closed()
        client.close()
    print(f"3 headers of 80,000 declarations refused in {time.monotonic() - started:.3f} s, "
          f"RSS {rss_before} -> {rss_kb(node)} kB")
    assert rss_kb(node) - rss_before < RSS_GROWTH_MAX_KB
    bob = await RawClient.connect(node)
    await bob.login("bob", "bob-pw")
    bob.close()
