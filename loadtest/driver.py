"""Load generator processes of the failover test (multiprocessing, one asyncio loop each).

Rules of this module:
- `Drivers.start()` forks `workers` processes (both cores of the machine generate
  load); each runs agents for its share of the users on its own event loop: our
  clients (`agent.UserAgent`, single or dual) or, for a `standard.StandardPlan`,
  standard XEP-0198 clients (`standard.StandardAgent`); both have one interface.
  Fork happens before the orchestrator starts any thread.
- Lock-step protocol on one pipe per worker. Orchestrator -> worker: `("go",)` start
  the traffic, `("fault", at, node)` a fault was injected (again for every fault of a
  soak: each agent's `fault_node` is taken anew), `("flush",)` hand over the events so
  far, `("stop",)` stop sending, drain, report. Worker -> orchestrator: `("status",
  dict)` every `STATUS_EVERY_S`, `("ready", dict)` once every user is logged in (dual:
  with its inactive connection), `("events", dict)` the events since the last flush
  (then forgotten, so a long run's memory stays bounded), `("done", dict)` with the
  events not flushed yet and the counters.
- Every wait has a deadline; a worker that dies is reported, never waited for.
- `("done", dict)` carries the events, counters and errors, and `reconnects`: the
  standard clients' `resumption` rows (empty for our clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeAlias

import uvloop

from presence_ha.loadtest.agent import UserAgent
from presence_ha.loadtest.scenario import Plan, UserSpec
from presence_ha.loadtest.standard import StandardAgent, StandardPlan, StandardRecorder

Agent: TypeAlias = UserAgent | StandardAgent

STATUS_EVERY_S = 0.5
DRAIN_S = 3.0


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (a user is one or two sockets)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---- worker side ---------------------------------------------------------------------

def make_agent(plan: Plan, spec: UserSpec, rec: StandardRecorder, rng: random.Random) -> Agent:
    """The agent the plan asks for: a standard XEP-0198 client or ours (single/dual)."""
    if isinstance(plan, StandardPlan):
        return StandardAgent(plan, spec, rec, rng)
    return UserAgent(plan, spec, rec, rng)


def _status(agents: list[Agent], fault: tuple[float, str] | None, rec: StandardRecorder) -> dict:
    by_node: Counter = Counter(a.active.node for a in agents if a.active is not None)
    status = {"users": len(agents), "logged_in": sum(by_node.values()), "ready": sum(a.ready for a in agents),
              "inactive": sum(a.backup is not None for a in agents), "active_by_node": dict(by_node),
              "retries": rec.counts["login_retries"], "sent": sum(1 for e in rec.events[-5000:] if e[0] == "S"),
              "errors": dict(rec.errors.most_common(8)), "not_ready": [_describe(a) for a in agents if not a.ready][:5]}
    if fault is not None:
        affected = [a for a in agents if a.fault_node == fault[1]]
        status["affected"] = len(affected)
        status["recovered"] = sum(a.last_trip > fault[0] for a in affected)
    return status


def _describe(agent: Agent) -> dict:
    """Where a user that is not ready stands (shown when a soak finds the pair unhealthy)."""
    return {"user": agent.spec.name, "active": agent.active.node if agent.active is not None else None,
            "backup": agent.backup.node if agent.backup is not None else None,
            "recovering": getattr(agent, "_recovering", None), "last_trip": round(agent.last_trip, 2)}


async def _login_all(agents: list[Agent], rate: float) -> None:
    async def one(agent: Agent, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        await agent.start()

    start = time.monotonic()
    await asyncio.gather(*(one(a, start + i / rate) for i, a in enumerate(agents)))


async def _wait_ready(agents: list[Agent], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not all(a.ready for a in agents) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def _worker_main(plan: Plan, users: list[UserSpec], index: int, conn) -> None:
    loop = asyncio.get_running_loop()
    rec = StandardRecorder()
    agents = [make_agent(plan, u, rec, random.Random(hash((plan.seed, index, u.name)))) for u in users]
    inbox: asyncio.Queue = asyncio.Queue()
    loop.run_in_executor(None, _pump, conn, loop, inbox)
    state: dict = {"fault": None}

    async def report() -> None:
        while True:
            conn.send(("status", _status(agents, state["fault"], rec)))
            await asyncio.sleep(STATUS_EVERY_S)

    reporter = loop.create_task(report())
    await _login_all(agents, plan.login_rate)
    upper = max(n.relogin_upper_s for n in plan.nodes)
    await _wait_ready(agents, upper * 3 + 30)
    # Thousands of clients' state lives until the end: keep it out of the collector's
    # scans, or a full collection stalls this worker for a good part of a second while
    # it should be timing a failover (measured: 1.6 s of 8 s after a 10,000-user kill).
    gc.collect()
    gc.freeze()
    conn.send(("ready", _status(agents, None, rec)))
    await _until(inbox, "go")
    runs = [loop.create_task(a.run()) for a in agents]
    while (message := await inbox.get())[0] != "stop":
        if message[0] == "fault":
            state["fault"] = (message[1], message[2])
            for agent in agents:
                agent.fault_node = agent.active.node if agent.active is not None else None
        elif message[0] == "flush":
            events, rec.events = rec.events, []  # agents append to rec.events: a fresh list from now on
            conn.send(("events", {"events": events}))
    await _drain(agents)
    reporter.cancel()
    conn.send(("done", {"events": rec.events, "counts": dict(rec.counts), "errors": dict(rec.errors),
                        "reconnects": rec.reconnects, "final": _status(agents, state["fault"], rec)}))
    for task in runs:
        task.cancel()
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


async def _drain(agents: list[Agent]) -> None:
    """Stop sending; keep reading (in-flight deliveries and acks) for DRAIN_S."""
    for agent in agents:
        agent.stopped = True
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        for agent in agents:
            agent.request_acks()
        await asyncio.sleep(0.5)


def _pump(conn, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue) -> None:
    """Worker thread: orchestrator messages into the loop's queue, until 'stop' or EOF."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            message = ("stop",)
        loop.call_soon_threadsafe(inbox.put_nowait, message)
        if message[0] == "stop":
            return


async def _until(inbox: asyncio.Queue, kind: str) -> None:
    while (await inbox.get())[0] != kind:
        pass


def worker_entry(plan: Plan, users: list[UserSpec], index: int, conn) -> None:
    """Process entry point."""
    raise_nofile()
    uvloop.run(_worker_main(plan, users, index, conn))  # the generators' loop costs less CPU per user


# ---- orchestrator side ---------------------------------------------------------------

@dataclass
class Drivers:
    """The load generator processes of one run, seen from the orchestrator."""

    plan: Plan
    users: list[UserSpec]
    workers: int = 2
    procs: list = field(default_factory=list)
    pipes: list = field(default_factory=list)
    status: dict[int, dict] = field(default_factory=dict)
    ready: dict[int, dict] = field(default_factory=dict)
    done: dict[int, dict] = field(default_factory=dict)
    batches: dict[int, dict] = field(default_factory=dict)  # the answers to the last ("flush",)

    def start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        shards = [self.users[i::self.workers] for i in range(self.workers)]
        for index, shard in enumerate(shards):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_entry, args=(self.plan, shard, index, child), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)

    def poll(self, timeout_s: float = 0.1) -> None:
        """Read whatever the workers sent; raise if one died before reporting."""
        deadline = time.monotonic() + timeout_s
        for index, (pipe, proc) in enumerate(zip(self.pipes, self.procs, strict=True)):
            while index not in self.done and pipe.poll(max(0.0, deadline - time.monotonic())):
                try:
                    kind, data = pipe.recv()
                except EOFError:
                    break
                {"status": self.status, "ready": self.ready, "done": self.done,
                 "events": self.batches}[kind][index] = data
                if kind == "ready":
                    self.status[index] = data
            if index not in self.done and not proc.is_alive():
                raise RuntimeError(f"load generator {proc.pid} died (exit code {proc.exitcode})")

    def total(self, key: str, source: str = "status") -> int:
        return sum(s.get(key, 0) for s in getattr(self, source).values())

    def errors(self) -> Counter:
        """The clients' most frequent errors so far (login, backup, connections closed)."""
        out: Counter = Counter()
        for s in self.status.values():
            out.update(s.get("errors", {}))
        return out

    def by_node(self) -> Counter:
        out: Counter = Counter()
        for s in self.status.values():
            out.update(s.get("active_by_node", {}))
        return out

    def send(self, *message) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def flush(self, deadline_s: float = 60.0) -> list[tuple]:
        """Every worker's events since the last flush (each worker then forgets them)."""
        self.batches = {}
        self.send("flush")
        self.wait_for("batches", deadline_s)
        return [row for batch in self.batches.values() for row in batch["events"]]

    def wait_for(self, what: str, deadline_s: float, on_tick=None) -> None:
        """Poll until every worker sent `what` ('ready', 'done' or 'batches'), with a deadline."""
        deadline = time.monotonic() + deadline_s
        while len(getattr(self, what)) < len(self.procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"load generators not {what} after {deadline_s:.0f} s")
            self.poll(0.2)
            if on_tick is not None:
                on_tick()

    def stop(self) -> None:
        """Join the workers; kill (by PID, via the Process object) any that hangs."""
        for index, pipe in enumerate(self.pipes):
            if index not in self.done:
                with contextlib.suppress(OSError):
                    pipe.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
