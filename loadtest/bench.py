"""Benchmark logic: pure statistics and schedules, worker scenarios, orchestration.

Rules:
- The parent process stays synchronous. Each scenario forks `workers` load-generator
  processes (one asyncio loop each) and runs them in lock-step over a Pipe:
  worker -> ("ready", info) after setup; parent -> start instant; worker -> result;
  parent -> stop; the worker then closes its connections. Server RSS and CPU are read
  by the parent between those steps, so setup and teardown never pollute them.
- Instants are time.monotonic() (CLOCK_MONOTONIC, system-wide on Linux), so a timestamp
  written in a body by one process can be compared in another.
- Loads are open loop: operation k is due at start + k / rate whatever the server does;
  `lag_ms` reports how far the generator itself fell behind.
- Raw latencies are seconds; summaries are milliseconds.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from presence_ha.loadtest.xmpp_client import NS_CLIENT, ClientConfig, XmppClient, XmppError, local_tag

SCENARIOS = ("login", "chat", "presence", "memory")
_BODY = f"{{{NS_CLIENT}}}body"
_STATUS = f"{{{NS_CLIENT}}}status"


# ---- pure parts -------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """count, p50, p99, mean and max of latencies given in seconds, in milliseconds."""
    n = len(latencies_s)
    return {
        "count": n,
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies_s, 99) * 1000, 3),
        "mean_ms": round(sum(latencies_s) / n * 1000, 3) if n else math.nan,
        "max_ms": round(max(latencies_s) * 1000, 3) if n else math.nan,
    }


def schedule(count: int, rate_per_s: float) -> list[float]:
    """Offsets (s) of `count` operations offered at a constant rate."""
    return [k / rate_per_s for k in range(count)]


def shard(items: Sequence, workers: int) -> list[list]:
    """Round-robin split of `items` over `workers` (some shards may be empty)."""
    return [list(items[w::workers]) for w in range(workers)]


def groups_of(count: int, size: int) -> list[list[int]]:
    """Consecutive groups of `size` user indices out of `count`; the remainder is left out."""
    return [list(range(g, g + size)) for g in range(0, count - size + 1, size)]


def marker(seq: int, now: float) -> str:
    """Body/status text carrying a sequence number and a send instant."""
    return f"b {seq} {now:.9f}"


def parse_marker(text: str | None) -> tuple[int, float] | None:
    """Inverse of `marker`; None for any other text."""
    if not text or not text.startswith("b "):
        return None
    parts = text.split(" ")
    if len(parts) != 3:
        return None
    try:
        return int(parts[1]), float(parts[2])
    except ValueError:
        return None


def failure_summary(reasons: Sequence[str], top: int = 5) -> dict[str, int]:
    """The most frequent failure reasons, with counts."""
    return dict(Counter(r[:120] for r in reasons).most_common(top))


# ---- server sampling --------------------------------------------------------------

def read_rss_kb(pid: int | None) -> int | None:
    """VmRSS of `pid` in kB (None without a pid)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def read_cpu_s(pid: int | None) -> float | None:
    """utime + stime of `pid` in seconds (None without a pid)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- configuration ----------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The server under test and how to log in to it."""

    host: str
    port: int
    domain: str
    user_prefix: str = "user"
    password: str = "secret"
    tls: bool = False
    mech: str = "PLAIN"
    sm: bool = False
    source_ips: tuple[str, ...] = ()

    def bare(self, i: int) -> str:
        return f"{self.user_prefix}{i}@{self.domain}"

    def client_config(self, i: int) -> ClientConfig:
        source = self.source_ips[i % len(self.source_ips)] if self.source_ips else None
        return ClientConfig(self.host, self.port, self.domain, f"{self.user_prefix}{i}",
                            self.password, tls=self.tls, mech=self.mech,
                            source_ip=source, sm=self.sm)


@dataclass(frozen=True)
class Settings:
    """Sizes and rates of every scenario (the same on every server compared)."""

    users: int = 1000
    workers: int = 2
    setup_rate: float = 500.0
    login_count: int = 0  # 0: all users
    login_rate: float = 500.0
    chat_pairs: int = 100
    chat_rate: float = 1000.0
    chat_duration_s: float = 10.0
    contacts: int = 20
    presence_users: int = 210
    presence_rate: float = 50.0
    presence_duration_s: float = 10.0
    memory_levels: tuple[int, ...] = (1000, 10000)
    settle_s: float = 3.0
    drain_s: float = 5.0
    scenarios: tuple[str, ...] = SCENARIOS


# ---- worker side ------------------------------------------------------------------

async def sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def paced(count: int, rate: float, start_at: float, action: Callable[[int], None]) -> float:
    """Call action(k) for k < count when due (start + k/rate); return the worst lag (s)."""
    lag = 0.0
    k = 0
    while k < count:
        now = time.monotonic()
        due = min(count, int((now - start_at) * rate) + 1)
        if k < due:
            lag = max(lag, now - (start_at + k / rate))
        while k < due:
            action(k)
            k += 1
        await sleep_until(start_at + k / rate)
    return lag


async def wait_for(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.02) -> bool:
    """Poll `predicate` until true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step_s)
    return True


@dataclass
class Scenario:
    """Worker-side part of a scenario: setup, measured run, close (override run/setup)."""

    target: Target
    users: list[int]
    setup_rate: float
    clients: dict[int, XmppClient] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def handler(self, i: int) -> Callable | None:
        return None

    async def login_users(self, users: Sequence[int], offsets: Sequence[float],
                          start_at: float) -> float:
        """Log `users` in at start + offsets; keep clients; return the last finish instant."""
        async def one(i: int, when: float) -> float:
            await sleep_until(when)
            client = XmppClient(self.target.client_config(i), self.handler(i))
            try:
                self.latencies.append(await client.login())
                self.clients[i] = client
            except XmppError as exc:
                self.failures.append(str(exc))
            return time.monotonic()
        finished = await asyncio.gather(*(one(i, start_at + o) for i, o in zip(users, offsets, strict=False)))
        return max(finished, default=start_at)

    async def setup(self) -> dict:
        await self.login_users(self.users, schedule(len(self.users), self.setup_rate),
                               time.monotonic())
        info = {"logged_in": len(self.clients), "failures": self.failures[:]}
        self.latencies.clear()
        self.failures.clear()
        return info

    async def run(self, start_at: float) -> dict:
        return {}

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))


@dataclass
class LoginScenario(Scenario):
    """Logins offered at a rate; `offsets` are this worker's slots of the global schedule."""

    offsets: list[float] = field(default_factory=list)

    async def setup(self) -> dict:
        return {}

    async def run(self, start_at: float) -> dict:
        last = await self.login_users(self.users, self.offsets, start_at)
        return {"latencies": self.latencies, "failures": self.failures, "last": last}


def _worker(scenario: Scenario, conn) -> None:
    """Process entry point: lock-step protocol described in the module docstring."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn.send(("ready", await scenario.setup()))
        start_at = await loop.run_in_executor(None, conn.recv)
        cpu0 = time.process_time()
        result = await scenario.run(start_at)
        result["client_cpu_s"] = time.process_time() - cpu0
        conn.send(("done", result))
        await loop.run_in_executor(None, conn.recv)
        await scenario.close()

    asyncio.run(main())


def run_workers(scenarios: Sequence[Scenario], pid: int | None = None,
                on_ready: Callable[[], dict] | None = None,
                timeout_s: float = 900.0) -> tuple[list[dict], list[dict], dict]:
    """Fork one process per scenario part; return (setup infos, results, extra).

    extra: on_ready()'s data, "start_at", and "cpu_s", the server CPU of the measured run.
    """
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for part in scenarios:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(part, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        infos = [_receive(p, proc, timeout_s) for p, proc in zip(pipes, procs, strict=True)]
        extra = on_ready() if on_ready else {}
        cpu0 = read_cpu_s(pid)
        start_at = time.monotonic() + 0.2
        for p in pipes:
            p.send(start_at)
        results = [_receive(p, proc, timeout_s) for p, proc in zip(pipes, procs, strict=True)]
        cpu1 = read_cpu_s(pid)
        extra.update(start_at=start_at, cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0)
        for p in pipes:
            p.send("stop")
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    return infos, results, extra


def _receive(pipe, proc, timeout_s: float) -> dict:
    """The next report of one worker; fail fast if it died (its traceback is on stderr)."""
    deadline = time.monotonic() + timeout_s
    while not pipe.poll(0.2):
        if not proc.is_alive():
            raise RuntimeError(f"load generator {proc.pid} died (exit code {proc.exitcode})")
        if time.monotonic() > deadline:
            raise TimeoutError("load generator did not answer in time")
    return pipe.recv()[1]


@dataclass
class ChatScenario(Scenario):
    """Chat messages between fixed pairs at this worker's share of the offered rate."""

    pairs: list[tuple[int, int]] = field(default_factory=list)
    rate: float = 100.0
    duration_s: float = 10.0
    drain_s: float = 5.0
    received: int = 0
    last_rx: float = 0.0

    def handler(self, i: int) -> Callable:
        def on_stanza(elem) -> None:
            body = elem.find(_BODY) if local_tag(elem) == "message" else None
            mark = parse_marker(body.text) if body is not None else None
            if mark is not None:
                self.last_rx = time.monotonic()
                self.latencies.append(self.last_rx - mark[1])
                self.received += 1
        return on_stanza

    async def run(self, start_at: float) -> dict:
        live = [(a, b) for a, b in self.pairs if a in self.clients and b in self.clients]
        count = int(self.rate * self.duration_s) if live else 0

        def send(k: int) -> None:
            a, b = live[k % len(live)]
            if (k // len(live)) % 2:
                a, b = b, a
            self.clients[a].send_message(self.clients[b].jid, marker(k, time.monotonic()))
        lag = await paced(count, self.rate, start_at, send)
        await wait_for(lambda: self.received >= count, self.duration_s + self.drain_s)
        return {"sent": count, "received": self.received, "latencies": self.latencies,
                "last": self.last_rx, "lag": lag}


@dataclass
class PresenceScenario(Scenario):
    """Presence broadcasts inside groups of mutual contacts; fan-out completion times."""

    groups: list[list[int]] = field(default_factory=list)
    rate: float = 10.0
    duration_s: float = 10.0
    drain_s: float = 5.0
    seen: dict[int, set[str]] = field(default_factory=dict)
    arrivals: Counter = field(default_factory=Counter)
    fanout: list[float] = field(default_factory=list)

    def handler(self, i: int) -> Callable:
        own = self.target.bare(i)
        self.seen[i] = set()

        def on_stanza(elem) -> None:
            if local_tag(elem) != "presence":
                return
            sender = elem.get("from", "").partition("/")[0]
            kind = elem.get("type")
            if sender == own or kind in ("subscribed", "unsubscribe", "unsubscribed"):
                return
            if kind == "subscribe":  # provisioning handshake: accept everybody
                self.clients[i].send_presence(to=sender, type_="subscribed")
            elif kind is None:
                self.seen[i].add(sender)
                self._arrived(parse_marker(elem.findtext(_STATUS)))
        return on_stanza

    def _arrived(self, mark: tuple[int, float] | None) -> None:
        if mark is None:
            return
        now = time.monotonic()
        self.latencies.append(now - mark[1])
        self.arrivals[mark[0]] += 1
        if self.arrivals[mark[0]] == len(self.groups[0]) - 1:
            self.fanout.append(now - mark[1])

    async def setup(self) -> dict:
        info = await super().setup()
        # Subscription requests reach available resources only (RFC 6121 §3.1.3): be
        # available first, then broadcast again once the rosters are complete.
        for client in self.clients.values():
            client.send_presence()
        info["subscriptions_requested"] = await self._ensure_rosters()
        if info["subscriptions_requested"]:
            for client in self.clients.values():
                client.send_presence()
        contacts = len(self.groups[0]) - 1 if self.groups else 0
        ready = await wait_for(lambda: all(len(self.seen[i]) >= contacts for i in self.clients), 60)
        info["all_contacts_online"] = ready
        return info

    async def _ensure_rosters(self) -> int:
        """Subscribe pairs whose roster entry is not 'both' (works against any server)."""
        async def missing(i: int, group: list[int]) -> set[int]:
            items = await self.clients[i].roster_get()
            both = {it.jid for it in items if it.subscription == "both"}
            return {j for j in group if j != i and j in self.clients
                    and self.target.bare(j) not in both}

        async def all_missing() -> list[tuple[int, int]]:
            todo = [(i, g) for g in self.groups for i in g if i in self.clients]
            found = await asyncio.gather(*(missing(i, g) for i, g in todo))
            return [(i, j) for (i, _g), js in zip(todo, found, strict=True) for j in js]

        pairs = await all_missing()
        for i, j in pairs:
            self.clients[i].send_presence(to=self.target.bare(j), type_="subscribe")
        deadline = time.monotonic() + 120
        while pairs and time.monotonic() < deadline and await all_missing():
            await asyncio.sleep(0.5)
        return len(pairs)

    async def run(self, start_at: float) -> dict:
        live = [g for g in self.groups if all(i in self.clients for i in g)]
        count = int(self.rate * self.duration_s) if live else 0

        def broadcast(k: int) -> None:
            group = live[k % len(live)]
            member = group[(k // len(live)) % len(group)]
            self.clients[member].send_presence(status=marker(k, time.monotonic()))
        self.latencies.clear()
        lag = await paced(count, self.rate, start_at, broadcast)
        await wait_for(lambda: len(self.fanout) >= count, self.duration_s + self.drain_s)
        return {"broadcasts": count, "complete": len(self.fanout), "fanout": self.fanout,
                "deliveries": self.latencies, "lag": lag}


@dataclass
class IdleScenario(Scenario):
    """Sessions that log in, send initial presence and stay idle (memory scenario)."""

    async def setup(self) -> dict:
        info = await super().setup()
        for client in self.clients.values():
            client.send_presence()
        return info


# ---- parent side ------------------------------------------------------------------

def _usage(extra: dict, results: list[dict], ops: int) -> dict:
    """Server CPU per operation, and the generators' CPU (to spot a saturated client)."""
    usage = {"client_cpu_s": round(sum(r.get("client_cpu_s", 0.0) for r in results), 3)}
    used = extra.get("cpu_s")
    if used is not None:
        usage["server_cpu_s"] = round(used, 3)
        usage["server_cpu_ms_per_op"] = round(used * 1000 / ops, 4) if ops else None
    return usage


def _setup_summary(infos: list[dict]) -> dict:
    fails = [f for info in infos for f in info.get("failures", [])]
    return {"setup_logged_in": sum(i.get("logged_in", 0) for i in infos),
            "setup_failures": len(fails), "setup_failure_reasons": failure_summary(fails)}


def bench_login(target: Target, s: Settings, pid: int | None) -> dict:
    count = s.login_count or s.users
    offsets = schedule(count, s.login_rate)
    parts = [LoginScenario(target, shard(range(count), s.workers)[w], s.setup_rate,
                           offsets=offsets[w::s.workers]) for w in range(s.workers)]
    _, results, extra = run_workers(parts, pid)
    lat = [x for r in results for x in r["latencies"]]
    fails = [f for r in results for f in r["failures"]]
    span = max(r["last"] for r in results) - extra["start_at"]
    return {"offered": count, "offered_rate": s.login_rate, "ok": len(lat),
            "failed": len(fails), "failure_reasons": failure_summary(fails),
            "achieved_per_s": round(len(lat) / span, 1) if span > 0 else None,
            **summarize_ms(lat), **_usage(extra, results, len(lat))}


def bench_chat(target: Target, s: Settings, pid: int | None) -> dict:
    pairs = [(2 * p, 2 * p + 1) for p in range(min(s.chat_pairs, s.users // 2))]
    parts = [ChatScenario(target, [u for pr in mine for u in pr], s.setup_rate / s.workers,
                          pairs=mine, rate=s.chat_rate * len(mine) / max(1, len(pairs)),
                          duration_s=s.chat_duration_s, drain_s=s.drain_s)
             for mine in shard(pairs, s.workers)]
    infos, results, extra = run_workers(parts, pid)
    lat = [x for r in results for x in r["latencies"]]
    sent = sum(r["sent"] for r in results)
    span = max(r["last"] for r in results) - extra["start_at"]
    return {"pairs": len(pairs), "offered_rate": s.chat_rate, "duration_s": s.chat_duration_s,
            "sent": sent, "received": len(lat), "lost": sent - len(lat),
            "achieved_per_s": round(len(lat) / span, 1) if span > 0 and lat else None,
            "generator_lag_ms": round(max(r["lag"] for r in results) * 1000, 1),
            **summarize_ms(lat), **_setup_summary(infos),
            **_usage(extra, results, len(lat))}


def bench_presence(target: Target, s: Settings, pid: int | None) -> dict:
    groups = groups_of(min(s.presence_users, s.users), s.contacts + 1)
    parts = [PresenceScenario(target, [u for g in mine for u in g], s.setup_rate / s.workers,
                              groups=mine, rate=s.presence_rate * len(mine) / max(1, len(groups)),
                              duration_s=s.presence_duration_s, drain_s=s.drain_s)
             for mine in shard(groups, s.workers)]
    infos, results, extra = run_workers(parts, pid)
    fanout = [x for r in results for x in r["fanout"]]
    broadcasts = sum(r["broadcasts"] for r in results)
    deliveries = [x for r in results for x in r["deliveries"]]
    return {"users": sum(map(len, groups)), "contacts": s.contacts,
            "offered_rate": s.presence_rate, "duration_s": s.presence_duration_s,
            "broadcasts": broadcasts, "complete": len(fanout),
            "fanout": summarize_ms(fanout), "delivery": summarize_ms(deliveries),
            "subscriptions_requested": sum(i.get("subscriptions_requested", 0) for i in infos),
            "all_contacts_online": all(i.get("all_contacts_online") for i in infos),
            "generator_lag_ms": round(max((r["lag"] for r in results), default=0) * 1000, 1),
            **_setup_summary(infos), **_usage(extra, results, broadcasts)}


def bench_memory(target: Target, s: Settings, pid: int | None, sessions: int,
                 baseline_kb: int | None) -> dict:
    """Server RSS growth per idle session, `sessions` sessions held by the workers.

    The delta is taken from `baseline_kb`, the RSS before the first memory level: heap
    freed by an earlier level stays in the process and is reused, so the RSS just before
    a later level would hide part of its cost.
    """
    parts = [IdleScenario(target, mine, s.setup_rate / s.workers)
             for mine in shard(range(sessions), s.workers)]
    before = read_rss_kb(pid)

    def sample() -> dict:
        time.sleep(s.settle_s)  # let the server finish login work and collect garbage
        return {"rss_kb": read_rss_kb(pid)}
    infos, _, extra = run_workers(parts, pid, sample)
    setup = _setup_summary(infos)
    held = setup["setup_logged_in"]
    after = extra["rss_kb"]
    base = baseline_kb if baseline_kb is not None else before
    per = (after - base) / held if held and after is not None and base is not None else None
    return {"sessions": sessions, "held": held, "rss_baseline_kb": base,
            "rss_before_kb": before, "rss_after_kb": after,
            "kb_per_session": round(per, 2) if per is not None else None, **setup}


def quiesce(pid: int | None, timeout_s: float = 60.0, busy: float = 0.1) -> float:
    """Wait until the server uses under `busy` of a CPU (leftover work of the previous
    scenario, e.g. timed-out logins still queued); return the seconds waited."""
    start = time.monotonic()
    last = read_cpu_s(pid)
    while last is not None and time.monotonic() - start < timeout_s:
        time.sleep(0.5)
        now = read_cpu_s(pid)
        if now is None or now - last < busy * 0.5:
            break
        last = now
    return round(time.monotonic() - start, 1)


def run_benchmark(target: Target, s: Settings, pid: int | None,
                  progress: Callable[[str], None] = lambda _msg: None) -> dict:
    """Run the selected scenarios in a fixed order; return a JSON-ready result tree."""
    out: dict = {"target": {k: v for k, v in asdict(target).items() if k != "password"},
                 "settings": asdict(s), "server_pid": pid, "results": {},
                 # other work on the machine skews every figure: keep the context
                 "host": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    runners = {"login": bench_login, "chat": bench_chat, "presence": bench_presence}
    # Memory first: on a fresh server, before other scenarios leave freed heap behind.
    for name in ("memory", "login", "chat", "presence"):
        if name not in s.scenarios:
            continue
        progress(name)
        out["host"][f"quiesce_before_{name}_s"] = quiesce(pid)
        if name == "memory":
            baseline = read_rss_kb(pid)
            out["results"]["memory"] = [bench_memory(target, s, pid, n, baseline)
                                        for n in sorted(s.memory_levels) if n <= s.users]
        else:
            out["results"][name] = runners[name](target, s, pid)
    out["host"]["loadavg_end"] = os.getloadavg()
    return out
