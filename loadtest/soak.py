"""`presence-ha loadtest soak`: a chaos soak of the local HA pair under load (issue 19).

Rules of this module:
- Built on the failover load test: the pair from `loadtest.failover.local_target`
  (a private SQLite pair with short timers), the load from `loadtest.driver`, the
  faults from `loadtest.faults`, the SRM timeline from `loadtest.monitor`; every
  decision that needs no I/O (schedule, way back, invariants) is in `loadtest.soakcheck`.
- One login phase, then until `--minutes` are over: wait the drawn interval, check the
  pair is healthy (Normal/Normal, every user ready; waited for up to the recovery
  bound) and take an RSS checkpoint, inject the drawn fault, tell the load generators,
  wait until the failover is done and every affected user has a round trip again
  (or the bound passes), leave the pair failed over for `--dwell` s, then bring it
  back: restart a killed or terminated node, SIGCONT a stopped one, start the stopped
  service, then fallback (or recovery) as
  `soakcheck.restore_action` says, until Normal/Normal or `--restore-deadline`. A
  fallback or recovery is measured like a fault (the users it moved back are its
  affected users) and listed with the faults.
- After each cycle the load generators hand over their events (`Drivers.flush`); the
  cycle's figures and the double-served check of the closed segments are computed
  then, and messages older than `SETTLE_HORIZON_S` before the last pair change settle
  (`soakcheck.SoakLedger`), so a long run's memory stays bounded.
- A pair that cannot be brought back ends the soak early (a failed invariant). The exit
  status is 1 when an invariant fails; report.json says which and why.
- Only the local pair: `--topology lab` (partition, database primary faults) is refused
  with a message; the lab's fault runs are `loadtest failover --topology lab`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from presence_ha.loadtest import faults, localpair, report, soakcheck
from presence_ha.loadtest.driver import Drivers, raise_nofile
from presence_ha.loadtest.failover import Target, local_target, make_plan, user_specs
from presence_ha.loadtest.monitor import Monitor
from presence_ha.loadtest.scenario import Ledger, from_tuple, summary_ms
from presence_ha.server.net.admin_rpc import AdminRpcError

console = Console(width=max(Console().width, 140))
SOAK_FAULTS = ("kill", "term", "stop", "service", "manual")
WAYS_BACK = ("fallback", "recover")  # measured like faults, listed with them
SETTLE_HORIZON_S = 30.0
RSS_EVERY_S = 5.0
LAB_REFUSAL = ("--topology lab is not supported by the soak yet: its partition and database-primary faults "
               "need the lab's own way back after each fault (`loadtest.lab.faultrun` builds a fresh lab per "
               "fault); run them one at a time with `presence-ha loadtest failover --topology lab --fault "
               "partition|db`")


@dataclass
class Cycle:
    """One fault or fallback as measured (an entry of the report's `faults`)."""

    kind: str
    node: str
    at: float
    affected: int = 0
    recovered: int = 0
    recovered_within_bound: bool = True
    detail: str = ""
    restore_problem: str | None = None
    figures: dict = field(default_factory=dict)


@dataclass
class Soak:
    target: Target
    drivers: Drivers
    monitor: Monitor
    opts: dict
    start: float = 0.0
    ledger: soakcheck.SoakLedger = field(default_factory=soakcheck.SoakLedger)
    cycles: list[Cycle] = field(default_factory=list)
    boundaries: list[float] = field(default_factory=list)  # pair changes: faults, fallbacks
    checked: int = 0  # segments [boundaries[i], boundaries[i+1]) checked for double serving
    double: set[str] = field(default_factory=set)
    checkpoints: list[dict] = field(default_factory=list)
    rss: dict[str, list] = field(default_factory=dict)
    stopped_pid: int | None = None  # a SIGSTOPped node not continued yet
    problems: list[str] = field(default_factory=list)
    _rss_at: float = 0.0

    # -- time passing ----------------------------------------------------------------
    def pause(self, seconds: float, until=None) -> bool:
        """Poll the load generators (and sample RSS) for `seconds` or until `until()`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.drivers.poll(0.2)
            self._sample_rss()
            if until is not None and until():
                return True
        return until is not None and until()

    def _sample_rss(self) -> None:
        now = time.monotonic()
        if now - self._rss_at < RSS_EVERY_S:
            return
        self._rss_at = now
        for name, pid in self.target.pids.items():
            kb = localpair.rss_kb(pid)
            if kb:
                self.rss.setdefault(name, []).append([round(now - self.start, 1), pid, kb])

    def states(self) -> dict[str, tuple[str, str] | None]:
        return asyncio.run(localpair.ha_states(self.target.db_url, list(self.target.pids)))

    def peer(self, node: str) -> str:
        return next(n for n in self.target.pids if n != node)

    # -- one cycle -------------------------------------------------------------------
    def healthy(self, bound_s: float) -> bool:
        users = len(self.target.users)
        if self.pause(bound_s, lambda: self.drivers.total("ready") >= users and self._normal()):
            return True
        stuck = [u for status in self.drivers.status.values() for u in status.get("not_ready", ())]
        self.problems.append(f"pair not healthy before fault {len(self.boundaries)}: states {self.states()}, "
                             f"{self.drivers.total('ready')}/{users} users ready (not ready: {stuck[:5]}; "
                             f"client errors: {dict(self.drivers.errors().most_common(6))})")
        return False

    def _normal(self) -> bool:
        return set(self.states().values()) == {soakcheck.HEALTHY}

    def checkpoint(self) -> None:
        index = sum(1 for c in self.cycles if c.kind not in WAYS_BACK)
        for name, pid in self.target.pids.items():
            self.checkpoints.append({"index": index, "node": name, "pid": pid, "rss_kb": localpair.rss_kb(pid),
                                     "t": round(time.monotonic() - self.start, 1)})

    def fault(self, draw: soakcheck.Draw) -> Cycle:
        node = draw.node
        injected = faults.inject(draw.kind, node, self.target.pids.get(node), self.target.db_url)
        if draw.kind == "stop":
            self.stopped_pid = injected.pid
        cycle = self._begin(draw.kind, node, injected.detail)
        peer = self.peer(node)
        self._await_users(cycle, lambda: (self.states().get(peer) or ("",))[0] == soakcheck.BACKUP)
        self.pause(self.opts["dwell"])  # failed over for a while, as an admin would leave it
        self._bring_back(injected, cycle)
        return cycle

    def _begin(self, kind: str, node: str, detail: str) -> Cycle:
        at = time.monotonic()
        self.drivers.send("fault", at, node)
        self.boundaries.append(at)
        cycle = Cycle(kind, node, at, detail=detail)
        self.cycles.append(cycle)
        console.print(f"[{at - self.start:7.1f} s] {kind} {node}: {detail}")
        return cycle

    def _await_users(self, cycle: Cycle, moved) -> None:
        """Until the move is done (`moved()`) and every affected user had a round trip."""
        bound = self.opts["recovery_bound"]

        def back() -> bool:
            cycle.affected, cycle.recovered = self.drivers.total("affected"), self.drivers.total("recovered")
            return cycle.recovered >= cycle.affected and moved()

        cycle.recovered_within_bound = self.pause(max(0.0, cycle.at + bound - time.monotonic()), back)
        self.pause(1.0)  # the last round trips and acks in the events before the flush

    def _bring_back(self, injected: faults.Injected, cycle: Cycle) -> None:
        """Undo the fault, then fallback/recover until Normal/Normal (module rules)."""
        try:
            self._undo(injected)
        except (OSError, AdminRpcError, RuntimeError) as exc:
            cycle.restore_problem = f"undoing {injected.fault} failed: {exc}"
            return
        node, peer = injected.node, self.peer(injected.node)
        deadline = time.monotonic() + self.opts["restore_deadline"]
        while time.monotonic() < deadline:
            action = soakcheck.restore_action(self.states(), node, peer)
            if action == "done":
                return
            if action == "fallback" and self._admin(node, "fallback"):
                back = self._begin("fallback", peer, f"fallback to {node} (admin RPC, as `ha fallback {node}`)")
                self._await_users(back, self._normal)
            elif action == "recover":
                self._recover(node, peer)
            self.pause(1.0)
        deadline_s = self.opts["restore_deadline"]
        cycle.restore_problem = f"pair not back to Normal/Normal after {deadline_s:g} s: {self.states()}"

    def _recover(self, node: str, peer: str) -> None:
        """Recovery (SRM restart on both nodes, SPEC §7), measured like a fallback."""
        states = self.states()
        if sum([self._admin(name, "recover") for name in (node, peer)]) == 2:  # both asked, even if one refuses
            back = self._begin("recover", peer, f"recovery of the pair (admin RPC, as `ha recover`) from {states}")
            self._await_users(back, self._normal)

    def _admin(self, node: str, op: str) -> bool:
        try:
            faults.admin_call(self.target.db_url, node, {"op": op})
        except AdminRpcError as exc:
            console.print(f"[dim]{op} of {node} not done yet: {exc}[/dim]")
            return False
        return True

    def _undo(self, injected: faults.Injected) -> None:
        if injected.fault in ("kill", "term"):
            self._restart(injected.node)
        elif injected.fault == "stop" and injected.pid is not None:
            os.kill(injected.pid, signal.SIGCONT)
            self.stopped_pid = None
        elif injected.fault == "service" and injected.service:
            faults.admin_call(self.target.db_url, injected.node, {"op": "service.start", "service": injected.service})

    def _restart(self, node: str) -> None:
        """Start the node again once its old process is gone (SPEC §6 rows 17-18)."""
        proc = next(p for p in self.target.procs if p.name == node)
        if proc.process is not None:
            try:
                proc.process.wait(timeout=localpair.STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
        proc.start()
        self.target.pids[node] = proc.pid

    # -- accounting ------------------------------------------------------------------
    def account(self, rows: list[tuple], final: bool = False) -> None:
        """Feed the events, figure the cycles not figured yet, check the closed segments, settle."""
        self.ledger.feed(from_tuple(row) for row in rows)
        ends = [*self.boundaries[1:], math.inf]
        for cycle, end in zip(self.cycles, ends, strict=True):
            if not cycle.figures:
                cycle.figures = self._figures(cycle, min(end, time.monotonic()))
        edges = [self.start, *self.boundaries, math.inf]  # segment i: [edges[i], edges[i + 1])
        closed = len(self.boundaries) + (1 if final else 0)
        for i in range(self.checked, closed):
            self.double.update(self.ledger.double_served_in(edges[i], edges[i + 1]))
        self.checked = closed
        if not final and self.boundaries:
            self.ledger.settle(self.boundaries[-1] - SETTLE_HORIZON_S)

    def _figures(self, cycle: Cycle, end: float) -> dict:
        users = self.ledger.affected(cycle.node, cycle.at)
        if cycle.kind in ("fallback", "recover"):  # only the users it moved back
            users = [u for u in users if self.ledger.node_at(u, end) not in (None, cycle.node)]
        downs = soakcheck.window_downtimes(self.ledger, users, cycle.at, end)
        bound = self.opts["recovery_bound"]
        late = [u for u, d in zip(users, downs, strict=True) if d > bound]
        if late:
            cycle.recovered_within_bound = False
        return {"affected_users": len(users), "downtime_ms": summary_ms(downs), "over_bound": len(late),
                "over_bound_users": late[:10]}


def run_soak(opts: dict) -> dict:
    """The whole soak; returns the report."""
    target = local_target(opts, opts["mode"])
    drivers, monitor, soak = None, None, None
    try:
        drivers = Drivers(make_plan(opts, opts["mode"], target), user_specs(target, opts["contacts"]), opts["workers"])
        drivers.start()  # fork before the monitor thread exists
        monitor = Monitor(target.db_url, target.pids, interval_s=1.0).start()
        soak = Soak(target, drivers, monitor, opts)
        _login(drivers, len(target.users), opts["login_deadline"])
        drivers.send("go")
        soak.start = time.monotonic()
        _loop(soak)
        drivers.send("stop")
        drivers.wait_for("done", 120)
        end = time.monotonic()
        soak.account([row for result in drivers.done.values() for row in result["events"]], final=True)
    finally:
        if soak is not None and soak.stopped_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(soak.stopped_pid, signal.SIGCONT)
        if monitor is not None:
            monitor.stop()
        if drivers is not None:
            drivers.stop()
        target.stop()
    return _report(soak, opts, end)


def _login(drivers: Drivers, users: int, deadline_s: float) -> None:
    console.print(f"logging in {users} users...")
    drivers.wait_for("ready", deadline_s)
    console.print(f"logged in: {drivers.total('logged_in')}, ready: {drivers.total('ready')}")


def _loop(soak: Soak) -> None:
    opts = soak.opts
    nodes = sorted(soak.target.pids)
    schedule = soakcheck.Schedule(random.Random(opts["seed"]), opts["faults"], nodes, opts["interval"])
    end_at = soak.start + opts["minutes"] * 60
    while True:
        draw = schedule.next()
        if time.monotonic() + draw.wait_s >= end_at:
            soak.pause(max(0.0, end_at - time.monotonic()))
            return
        soak.pause(draw.wait_s)
        if not soak.healthy(opts["recovery_bound"]):
            return
        soak.checkpoint()
        try:
            cycle = soak.fault(draw)
        except (AdminRpcError, OSError) as exc:  # the node refused the fault: end with what we have
            soak.problems.append(f"could not inject {draw.kind} on {draw.node}: {exc}")
            return
        soak.account(soak.drivers.flush())
        _say(soak, cycle)
        if any(c.restore_problem for c in soak.cycles):
            return


def _say(soak: Soak, cycle: Cycle) -> None:
    for c in soak.cycles[soak.cycles.index(cycle):]:
        d = c.figures.get("downtime_ms", {})
        flag = "" if c.recovered_within_bound and not c.restore_problem else "  [red]VIOLATION[/red]"
        console.print(f"  {c.kind} {c.node}: {c.figures.get('affected_users', 0)} affected, downtime p50 "
                      f"{d.get('p50')} p99 {d.get('p99')} max {d.get('max')} ms{flag}")


def _report(soak: Soak, opts: dict, end: float) -> dict:
    messages = soak.ledger.messages()
    bound = opts["recovery_bound"]
    events = [_cycle_json(c, soak.start) for c in soak.cycles]
    invariants = {
        "lost_acked": soakcheck.count_verdict("lost_acked", messages.get("lost_acked", 0),
                                              soak.ledger.lost_acked_ids()),
        "double_served": soakcheck.count_verdict("double_served", len(soak.double), sorted(soak.double)),
        "recovery": soakcheck.recovery_verdict(events, bound),
        "rss": soakcheck.rss_verdict(soak.checkpoints, opts["rss_limit_mb"], opts["rss_limit_pct"]),
    }
    if soak.problems:
        invariants["recovery"] = soakcheck.verdict(False, "; ".join(soak.problems))
    return {
        "users": len(soak.target.users), "mode": opts["mode"], "minutes": opts["minutes"], "seed": opts["seed"],
        "elapsed_s": round(end - soak.start, 1), "faults": events,
        "fault_kinds": sorted({e["kind"] for e in events if e["kind"] not in WAYS_BACK}),
        "totals": {**messages, "double_served": len(soak.double), "double_served_users": sorted(soak.double)[:20],
                   "lost_acked_sample": _lost_detail(soak)},
        "rss_kb": soak.rss, "rss_checkpoints": soak.checkpoints,
        "srm_timeline": [{**s, "t": round(s["t"] - soak.start, 2)} for s in soak.monitor.states],
        "invariants": invariants, "pass": all(v["pass"] for v in invariants.values()),
        "options": {k: v for k, v in opts.items() if k != "report_dir"},
    }


def _lost_detail(soak: Soak) -> list[dict]:
    """Who sent each lost acknowledged message to whom, when, via which nodes (unsettled ones)."""
    ledger = soak.ledger
    ids = [m for m in ledger.lost_acked_ids() if m in ledger.sent or m in ledger.settled_sent]
    view = Ledger(sent={**ledger.settled_sent, **ledger.sent}, acked=ledger.acked, served=ledger.served)
    rows = report.lost_detail(view, ids, soak.start)  # settled ones: no ack time or resends kept
    for row in rows:  # how the recipient moved around the send: which node served it, how
        sent = view.sent[row["id"]].at
        row["to_served"] = [[round(v.at - soak.start, 3), v.node, v.how] for v in soak.ledger.served.get(row["to"], ())
                            if sent - 5 <= v.at <= sent + 10]
    return rows


def _cycle_json(c: Cycle, start: float) -> dict:
    d = c.figures.get("downtime_ms", {})
    return {"kind": c.kind, "node": c.node, "at": round(c.at - start, 1), "detail": c.detail,
            "affected": c.figures.get("affected_users", c.affected), "recovered": c.recovered,
            "downtime_p50_ms": d.get("p50"), "downtime_p99_ms": d.get("p99"), "downtime_max_ms": d.get("max"),
            "over_bound": c.figures.get("over_bound", 0), "over_bound_users": c.figures.get("over_bound_users", []),
            "recovered_within_bound": c.recovered_within_bound, "restore_problem": c.restore_problem}


def table(result: dict) -> Table:
    out = Table(title=f"Chaos soak: {result['users']} users, {result['elapsed_s']:.0f} s, "
                      f"{sum(e['kind'] not in WAYS_BACK for e in result['faults'])} faults")
    for col in ("at s", "fault", "node", "affected", "downtime p50/p99/max ms", "within bound"):
        out.add_column(col, justify="left" if col in ("fault", "node") else "right")
    for e in result["faults"]:
        figures = "/".join("-" if e[k] is None else f"{e[k]:,.0f}"
                           for k in ("downtime_p50_ms", "downtime_p99_ms", "downtime_max_ms"))
        out.add_row(f"{e['at']:.0f}", e["kind"], e["node"], str(e["affected"]), figures,
                    "yes" if e["recovered_within_bound"] and not e["restore_problem"] else "NO")
    return out


def invariants_table(result: dict) -> Table:
    out = Table(title="Invariants")
    for col in ("invariant", "verdict", "reason"):
        out.add_column(col)
    for name, v in result["invariants"].items():
        out.add_row(name, "[green]pass[/green]" if v["pass"] else "[red]FAIL[/red]", v["reason"])
    return out


def _interval(_ctx, _param, value: str) -> tuple[float, float]:
    try:
        return soakcheck.parse_interval(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _kinds(_ctx, _param, value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in SOAK_FAULTS]
    if unknown or not kinds:
        raise click.BadParameter(f"choose among {', '.join(SOAK_FAULTS)} (got {value!r})")
    return kinds


def _pair(_ctx, _param, value: str) -> tuple[int, int]:
    lower, _, upper = value.partition(",")
    try:
        return int(lower), int(upper or lower)
    except ValueError:
        raise click.BadParameter("expected LOWER,UPPER in whole seconds (>= 1)") from None


@click.command("soak", epilog="""\b
Invariants (report.json "invariants"; exit status 1 when one fails):
  lost_acked     0 acknowledged messages never delivered (SPEC §9)
  double_served  0 users served by two nodes, per segment between two pair changes
  recovery       every user moved by a fault or a fallback has a round trip again within
                 --recovery-bound s; the pair is back to Normal/Normal within --restore-deadline
  rss            per node process, RSS at each healthy checkpoint (just before a fault)
                 within max(--rss-limit-mb, --rss-limit-pct) of its first one after the
                 first fault""")
@click.option("--minutes", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="How long the fault loop runs (after the login phase).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write report.json here.")
@click.option("--users", default=1000, show_default=True, help="Simulated users (each a real XMPP client).")
@click.option("--mode", type=click.Choice(["single", "dual"]), default="dual", show_default=True,
              help="Our clients: single (re-login on loss) or dual (inactive backup connection).")
@click.option("--interval", default="30,60", callback=_interval, show_default=True,
              help="Seconds LOWER,UPPER between the end of one fault's recovery and the next fault.")
@click.option("--faults", "faults_", default=",".join(SOAK_FAULTS), callback=_kinds, show_default=True,
              help="The fault kinds to draw from (kill, term, stop: signals; service: a critical service "
                   "stopped; manual: `ha failover`). Each is followed by the way back: restart, SIGCONT, "
                   "service start, then `ha fallback`.")
@click.option("--seed", default=1, show_default=True, help="Seeds the schedule (waits, kinds, nodes) and clients.")
@click.option("--dwell", default=5.0, show_default=True,
              help="Seconds the pair stays failed over (users back on the peer) before the way back.")
@click.option("--recovery-bound", default=30.0, show_default=True,
              help="Seconds within which every affected user must have a round trip again.")
@click.option("--restore-deadline", default=120.0, show_default=True,
              help="Seconds within which the pair must be back to Normal/Normal after a fault.")
@click.option("--rss-limit-mb", default=64.0, show_default=True, help="RSS growth always allowed per node (MB).")
@click.option("--rss-limit-pct", default=20.0, show_default=True, help="RSS growth allowed per node (% of its first).")
@click.option("--topology", type=click.Choice(["local", "lab"]), default="local", show_default=True,
              help="local: a private HA pair on this host (SQLite). lab: not supported yet (refused).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the local pair lives (default: a temp dir).")
@click.option("--workers", default=2, show_default=True, help="Load generator processes.")
@click.option("--relogin", default="1,3", callback=_pair, show_default=True,
              help="Local pair re-login limits LOWER,UPPER s.")
@click.option("--probe-interval", default=0.5, show_default=True, help="Seconds between round-trip probes per user.")
@click.option("--chat-interval", default=4.0, show_default=True, help="Mean seconds between chat messages per user.")
@click.option("--presence-interval", default=20.0, show_default=True, help="Mean seconds between presence changes.")
@click.option("--liveness", default=3.0, show_default=True, help="Silent connection declared dead after (s).")
@click.option("--contacts", default=20, show_default=True)
@click.option("--login-rate", default=100.0, show_default=True, help="Initial logins per second (all workers).")
@click.option("--login-deadline", default=600.0, show_default=True, help="Longest login phase (s).")
def soak_command(**opts) -> None:
    """Chaos soak: random faults on the local HA pair under load, invariants checked."""
    if opts["topology"] == "lab":
        raise click.UsageError(LAB_REFUSAL)
    opts["faults"] = opts.pop("faults_")
    opts.update(source_ips=(), cluster_json=None)
    raise_nofile()
    signal.signal(signal.SIGTERM, _interrupted)  # `kill PID` tears down like Ctrl-C
    console.rule(f"soak: {opts['users']} users, {opts['minutes']:g} min, faults {','.join(opts['faults'])}, "
                 f"interval {opts['interval'][0]:g}-{opts['interval'][1]:g} s, seed {opts['seed']}")
    result = run_soak(opts)
    console.print(table(result))
    console.print(invariants_table(result))
    totals = result["totals"]
    console.print(f"messages: sent {totals.get('sent', 0)}, delivered {totals.get('delivered', 0)}, "
                  f"lost {totals.get('lost', 0)} (bounced with an error {totals.get('bounced', 0)}), "
                  f"lost_acked {totals.get('lost_acked', 0)}, "
                  f"duplicated {totals.get('duplicated', 0)}, double_served {totals['double_served']}")
    if opts["report_dir"]:
        console.print(f"report: {report.write_json(Path(opts['report_dir']), result)}")
    if not result["pass"]:
        raise SystemExit(1)


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt

