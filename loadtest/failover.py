"""`presence-ha loadtest failover`: failover downtime and message loss at scale (SPEC §6-§9).

Rules of this module:
- Orchestration only: the cluster comes from `loadtest.localpair` (a private HA pair
  on SQLite with short timers, or the nodes of `--cluster-json` from `presence-ha up`),
  or with `--topology lab` from `loadtest.lab.faultrun` (a fresh lab of separate hosts
  per run, or the running one of `--lab-dir`; its faults, promotion time and way back),
  the load from `loadtest.driver` (forked before any thread starts), the fault from
  `loadtest.faults`, per-node series from `loadtest.monitor`, the figures from
  `loadtest.scenario` and `loadtest.report`.
- One run per mode (`--mode both`: single, then dual, each on a fresh local pair).
  Phases: log in (dual: until every inactive connection is up), steady traffic for
  `--warmup` s, the fault, then until every affected user has a round trip again (or
  `--after` s), plus `--settle` s; then the load generators drain and report.
- The tool stops by itself: every phase has a deadline, every process it started is
  stopped by PID (a SIGSTOPped node gets SIGCONT after the run).
- `--clients standard`: one run named "standard" of XEP-0198 clients
  (`loadtest.standard`) that dial only the service address: the local pair gets
  HAProxy in front (`localpair.start_service`) and relays instead of redirecting; with
  `--cluster-json` its "service". Its report adds `resumption` (`loadtest.resumption`).
  The functions for it are the `standard_*` ones below.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from presence_ha.loadtest import faults, localpair, report, resumption
from presence_ha.loadtest.driver import Drivers, raise_nofile
from presence_ha.loadtest.lab.faultrun import LAB_FAULTS, LabRun
from presence_ha.loadtest.lab.faultrun import refusal as lab_refusal
from presence_ha.loadtest.lab.lab import check_prerequisites
from presence_ha.loadtest.lab.netns import LabError
from presence_ha.loadtest.monitor import Monitor
from presence_ha.loadtest.scenario import Ledger, NodeAddr, Plan, UserSpec, from_tuple, roster_pairs, rosters
from presence_ha.loadtest.standard import StandardPlan

log = logging.getLogger(__name__)
console = Console(width=max(Console().width, 160))
PASSWORD = "loadtest-pw"
LAB_ONLY_FAULTS = tuple(f for f in LAB_FAULTS if f not in faults.FAULTS)


@dataclass
class Target:
    """The cluster of one run: where the nodes are, who the users are, what we own."""

    db_url: str
    domain: str
    nodes: list[NodeAddr]
    users: list[tuple[str, str, str]]  # (name, password, active node)
    pids: dict[str, int | None]
    procs: list[localpair.NodeProc]
    service: NodeAddr | None = None  # the cluster's service address (standard clients dial it)
    helpers: list = field(default_factory=list)  # other processes we started (HAProxy)
    lab: LabRun | None = None  # --topology lab: the lab this run built (and takes down)
    cluster_key: Path | None = None  # from cluster.json; None: the default for db_url (server.cluster_key)

    def stop(self) -> None:
        for helper in self.helpers:
            helper.stop()
        for proc in self.procs:
            proc.stop()
        if self.lab is not None:
            self.lab.stop()


def local_target(opts: dict, mode: str) -> Target:
    base = Path(opts["data_dir"] or tempfile.mkdtemp(prefix="failover-")) / mode
    base.mkdir(parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{base / 'presence-ha.db'}"
    lower, upper = opts["relogin"]
    users = [(f"lt{i}", PASSWORD) for i in range(opts["users"])]
    asyncio.run(localpair.provision_pair(url, "loadtest.test", users, (lower, upper), redirect=mode != "standard"))
    procs = localpair.start_pair(url, base)
    target = _read_target(url, dict(users), procs)
    console.print(f"[dim]local HA pair in {base} (logs {base}/n1.log, n2.log)[/dim]")
    if mode == "standard":
        standard_service(target, base)
    return target


def standard_service(target: Target, base: Path) -> None:
    """Put the service address (HAProxy, as `up` does) in front of the local pair."""
    try:
        service = localpair.start_service(target.domain, target.nodes, base)
    except RuntimeError as exc:
        target.stop()
        raise click.ClickException(str(exc)) from None
    target.helpers.append(service)
    host, port = service.address
    target.service = NodeAddr("service", host, port)
    console.print(f"[dim]service address {host}:{port} (HAProxy, log {base}/haproxy.log)[/dim]")


def json_target(path: str, limit: int) -> Target:
    spec = json.loads(Path(path).read_text())
    passwords = {u["username"]: u["password"] for u in spec["users"]}
    target = _read_target(spec["database_url"], passwords, [], limit)
    target.cluster_key = Path(spec["cluster_key"]) if spec.get("cluster_key") else None
    if spec.get("service"):
        target.service = NodeAddr("service", spec["service"]["host"], int(spec["service"]["port"]))
    return target


def _read_target(url: str, passwords: dict[str, str], procs: list, limit: int | None = None) -> Target:
    domain, nodes, located, _group = asyncio.run(localpair.read_layout(url))
    names = sorted((u for u in passwords if u in located), key=lambda u: (len(u), u))[:limit]
    users = [(u, passwords[u], located[u]) for u in names]
    pids = {p.name: p.pid for p in procs} or {n.name: localpair.pid_listening(n.port) for n in nodes}
    return Target(url, domain, nodes, users, pids, procs)


def lab_target(opts: dict, mode: str) -> Target:
    """--topology lab: a fresh lab of separate hosts for this run (`loadtest.lab.faultrun`)."""
    try:
        run = LabRun.build(opts, mode, say=console.print)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        target = _read_target(run.data["database_url"], run.passwords, [], opts["users"])
    except BaseException:
        run.stop()
        raise
    target.pids, target.lab = run.pids(), run
    target.cluster_key = Path(run.data["cluster_key"]) if run.data.get("cluster_key") else None
    return target


def _make_target(opts: dict, mode: str) -> Target:
    if opts["topology"] == "lab":
        return lab_target(opts, mode)
    return local_target(opts, mode) if not opts["cluster_json"] else json_target(opts["cluster_json"], opts["users"])


def user_specs(target: Target, contacts: int) -> list[UserSpec]:
    by_node: dict[str, list[str]] = {}
    for name, _pw, node in target.users:
        by_node.setdefault(node, []).append(name)
    asyncio.run(localpair.ensure_rosters(target.db_url, target.domain, by_node, contacts))
    roster = rosters(roster_pairs(by_node, contacts))
    return [UserSpec(n, pw, node, tuple(roster.get(n, ()))) for n, pw, node in target.users]


def make_plan(opts: dict, mode: str, target: Target) -> Plan:
    if mode == "standard":
        return standard_plan(opts, target)
    return Plan(mode=mode, domain=target.domain, nodes=tuple(target.nodes),
                probe_interval_s=opts["probe_interval"], chat_interval_s=opts["chat_interval"],
                presence_interval_s=opts["presence_interval"], liveness_s=opts["liveness"],
                login_rate=opts["login_rate"] / opts["workers"], source_ips=opts["source_ips"], seed=opts["seed"])


def standard_plan(opts: dict, target: Target) -> StandardPlan:
    """Standard clients: the service address, and who backs up whom (their node query)."""
    if target.service is None:
        raise click.UsageError("--clients standard needs a service address: the cluster.json of `presence-ha up` "
                               "has none (started with --service-port 0, or without haproxy)")
    peers = asyncio.run(localpair.pair_peers(target.db_url))
    return StandardPlan(mode="standard", domain=target.domain, nodes=tuple(target.nodes),
                        probe_interval_s=opts["probe_interval"], chat_interval_s=opts["chat_interval"],
                        presence_interval_s=opts["presence_interval"], liveness_s=opts["liveness"],
                        login_rate=opts["login_rate"] / opts["workers"], source_ips=opts["source_ips"],
                        seed=opts["seed"], service=target.service, peers=tuple(sorted(peers.items())))


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)


def _login_phase(drivers: Drivers, progress: Progress, users: int, deadline_s: float) -> None:
    logins = progress.add_task("logged in", total=users, info="")
    ready = progress.add_task("ready (dual: + inactive)", total=users, info="")

    def tick() -> None:
        progress.update(logins, completed=drivers.total("logged_in"), info=f"retries {drivers.total('retries')}")
        progress.update(ready, completed=drivers.total("ready"), info=f"inactive {drivers.total('inactive')}")

    drivers.wait_for("ready", deadline_s, tick)
    tick()


def _fault_phase(drivers: Drivers, progress: Progress, opts: dict, target: Target, node: str):
    """Warm up, inject the fault, wait for the affected users to be back; return (fault, at)."""
    users = len(target.users)
    steady = progress.add_task("steady traffic", total=opts["warmup"], info="")
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < opts["warmup"]:
        drivers.poll(0.2)
        progress.update(steady, completed=elapsed, info=f"active by node {dict(drivers.by_node())}")
    progress.update(steady, completed=opts["warmup"])
    _check_healthy(drivers, target, users)
    if target.lab is not None:
        injected = target.lab.inject(node)
    else:
        injected = faults.inject(opts["fault"], node, target.pids.get(node), target.db_url)
    fault_at = time.monotonic()
    drivers.send("fault", fault_at, node)
    back = progress.add_task(f"recovered after {opts['fault']}", total=users, info="")
    deadline, done_at = fault_at + opts["after"], None
    while time.monotonic() < deadline and (done_at is None or time.monotonic() < done_at + opts["settle"]):
        drivers.poll(0.2)
        affected, recovered = drivers.total("affected"), drivers.total("recovered")
        progress.update(back, total=max(affected, 1), completed=recovered,
                        info=f"active by node {dict(drivers.by_node())}")
        if done_at is None and affected and recovered >= affected:
            done_at = time.monotonic()
    return injected, fault_at


def _check_healthy(drivers: Drivers, target: Target, users: int) -> None:
    """Refuse to measure a failover of a pair that already failed under the load itself."""
    states = asyncio.run(localpair.ha_states(target.db_url, [n.name for n in target.nodes]))
    sick = {n: s for n, s in states.items() if s != ("Normal", "Normal")}
    ready = drivers.total("ready")
    if sick or ready < users:
        raise click.ClickException(
            f"not injecting the fault: the cluster is not healthy before it (SRM states {sick or 'Normal'}, "
            f"{ready}/{users} users ready); lower --users or --login-rate, see the node logs; "
            f"client errors: {dict(drivers.errors().most_common(5)) or 'none'}")


def run_mode(opts: dict, mode: str) -> dict:
    """One complete run of `mode`; returns its report entry."""
    target = _make_target(opts, mode)
    injected, monitor, drivers, extra = None, None, None, {}
    try:
        node = opts["node"] or target.nodes[0].name
        reason = None if target.lab else faults.refusal(opts["fault"], target.db_url, target.pids.get(node) is not None,
                                                        False)
        if reason:
            raise click.UsageError(reason)
        drivers = Drivers(make_plan(opts, mode, target), user_specs(target, opts["contacts"]), opts["workers"])
        drivers.start()  # fork before the monitor thread exists
        monitor = Monitor(target.db_url, target.pids, cluster_key=target.cluster_key).start()
        with _progress() as progress:
            _login_phase(drivers, progress, len(target.users), opts["login_deadline"])
            progress.console.print(f"logged in: {drivers.total('logged_in')}, ready: {drivers.total('ready')}")
            drivers.send("go")
            start = time.monotonic()
            injected, fault_at = _fault_phase(drivers, progress, opts, target, node)
            if target.lab is not None:
                target.lab.after_fault(drivers.poll, opts["settle"])
            traffic_end = time.monotonic()
            drivers.send("stop")
            drivers.wait_for("done", 120)
        end = time.monotonic()
        if target.lab is not None:
            extra = target.lab.finish()
    finally:
        faults.restore(injected)
        if monitor is not None:
            monitor.stop()
        if drivers is not None:
            drivers.stop()
        target.stop()
    summary = _summarize(drivers, monitor, mode, len(target.users), injected, fault_at, start, end, target.lab,
                         traffic_end)
    return {**summary, **extra}


def _summarize(drivers: Drivers, monitor: Monitor, mode: str, users: int, injected, fault_at, start, end,
               lab: LabRun | None = None, traffic_end: float | None = None) -> dict:
    ledger = Ledger()
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    for result in drivers.done.values():
        ledger.feed(from_tuple(row) for row in result["events"])
        for key, value in result["counts"].items():
            counts[key] = counts.get(key, 0) + value
        for key, value in result["errors"].items():
            errors[key] = errors.get(key, 0) + value
    fault = {"fault": injected.fault, "node": injected.node, "detail": injected.detail}
    run = report.summarize(ledger, mode=mode, users=users, fault=fault, fault_at=fault_at, start=start,
                           end=end, monitor=monitor, counts=counts, errors=errors, traffic_end=traffic_end)
    if mode == "standard":
        rows = (resumption.from_row(r) for result in drivers.done.values() for r in result.get("reconnects", ()))
        run["resumption"] = resumption.figures(rows, fault_at)
    return {**run, **lab.figures(ledger, fault_at)} if lab is not None else run


def run_modes(opts: dict) -> tuple[str, ...]:
    """The runs to make: 'standard' for standard clients, else the --mode(s)."""
    if opts["clients"] == "standard":
        source = click.get_current_context().get_parameter_source("mode")
        if source is not None and source.name != "DEFAULT":
            raise click.UsageError("--mode is for --clients dual (our clients); standard clients have one mode")
        return ("standard",)
    return ("single", "dual") if opts["mode"] == "both" else (opts["mode"],)


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _pair(_ctx, _param, value: str) -> tuple[int, int]:
    lower, _, upper = value.partition(",")
    try:
        return int(lower), int(upper or lower)
    except ValueError:
        raise click.BadParameter("expected LOWER,UPPER in whole seconds (>= 1)") from None


@click.command("failover")
@click.option("--users", default=200, show_default=True, help="Simulated users (each a real XMPP client).")
@click.option("--clients", type=click.Choice(["dual", "standard"]), default="dual", show_default=True,
              help="dual: our clients, each dialling its node, in the --mode(s) below. standard: XEP-0198 "
                   "clients as slixmpp/aioxmpp run them (one connection to the service address, SCRAM, "
                   "resumption; on failure log in again and resend what was not acknowledged); one run "
                   "named 'standard', the report adds resumption times and re-logins.")
@click.option("--mode", type=click.Choice(["single", "dual", "both"]), default="both", show_default=True,
              help="With --clients dual: single (re-login on loss), dual (inactive backup connection), both.")
@click.option("--fault", type=click.Choice(faults.FAULTS + LAB_ONLY_FAULTS), default="kill", show_default=True,
              help="With --topology lab: host (power-off: node + PostgreSQL SIGKILLed), db (the primary "
                   "dies), partition (h1 and h2 cut, both reach the witness), isolate (the node's host cut from "
                   "everything), wan (80 ms RTT, 1% loss between the hosts, then kill), kill.")
@click.option("--topology", type=click.Choice(["local", "lab"]), default="local", show_default=True,
              help="local: two nodes on this host (or --cluster-json); lab: a fresh lab of separate hosts per run "
                   "(root; `presence-ha lab --help`).")
@click.option("--lab-id", type=click.IntRange(0, 255), default=0, show_default=True,
              help="--topology lab: the lab's number (subnet 198.18.ID.0/24).")
@click.option("--lab-dir", type=click.Path(file_okay=False, exists=True),
              help="--topology lab: use the running lab of `presence-ha lab up --data-dir DIR` (left running).")
@click.option("--db-primary", type=click.Choice(["fault-host", "other-host", "any"]), default="fault-host",
              show_default=True, help="--topology lab: put the database primary on the faulted node's host, "
                                      "on the other node host, or leave it where Patroni started it.")
@click.option("--node", default=None, help="Node to fault (default: the first node).")
@click.option("--cluster-json", type=click.Path(exists=True, dir_okay=False), help="Target `presence-ha up` nodes.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write report.json and PNG plots here.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the local pair lives (default: a temp dir).")
@click.option("--workers", default=2, show_default=True, help="Load generator processes.")
@click.option("--warmup", default=5.0, show_default=True, help="Seconds of steady traffic before the fault.")
@click.option("--after", default=60.0, show_default=True, help="Longest wait for recovery after the fault (s).")
@click.option("--settle", default=3.0, show_default=True, help="Traffic kept after every user is back (s).")
@click.option("--relogin", default="1,3", callback=_pair, show_default=True,
              help="Local pair re-login limits LOWER,UPPER s.")
@click.option("--probe-interval", default=0.5, show_default=True, help="Seconds between round-trip probes per user.")
@click.option("--chat-interval", default=4.0, show_default=True, help="Mean seconds between chat messages per user.")
@click.option("--presence-interval", default=20.0, show_default=True, help="Mean seconds between presence changes.")
@click.option("--liveness", default=3.0, show_default=True, help="Silent connection declared dead after (s).")
@click.option("--contacts", default=20, show_default=True)
@click.option("--login-rate", default=100.0, show_default=True, help="Initial logins per second (all workers).")
@click.option("--login-deadline", default=600.0, show_default=True, help="Longest login phase (s).")
@click.option("--source-ips", default="", callback=lambda _c, _p, v: tuple(x for x in v.split(",") if x),
              help="Comma-separated 127.0.0.x source addresses to spread client ports over.")
@click.option("--seed", default=1, show_default=True)
def failover_command(**opts) -> None:
    """Fail a node over under load; measure downtime, takeover time and message loss."""
    if opts["topology"] == "lab":
        if opts["clients"] == "standard":
            raise click.UsageError("--clients standard runs on the local topology (or --cluster-json) only")
        _lab_command(opts)
        return
    modes = run_modes(opts)
    if opts["cluster_json"] and opts["mode"] == "both" and opts["clients"] == "dual":
        raise click.UsageError("--mode both needs a fresh pair per mode: with --cluster-json run one mode, "
                               "then `presence-ha ha fallback NODE` (or restart the node) before the other")
    db_url = json.loads(Path(opts["cluster_json"]).read_text())["database_url"] if opts["cluster_json"] else "sqlite"
    reason = faults.refusal(opts["fault"], db_url, have_pid=True, proxied_db=False)
    if reason:
        raise click.UsageError(reason)
    lab_reason = lab_refusal(opts["fault"], "local")
    if lab_reason:
        raise click.UsageError(lab_reason)
    _run_all(opts, modes)


def _lab_command(opts: dict) -> None:
    """--topology lab: checks, then the same runs on a fresh lab per mode."""
    reason = lab_refusal(opts["fault"], "lab")
    if reason:
        raise click.UsageError(reason)
    if opts["cluster_json"]:
        raise click.UsageError("--topology lab builds its own lab (or uses --lab-dir): leave out --cluster-json")
    if opts["lab_dir"] and opts["fault"] == "wan":
        raise click.UsageError("--fault wan builds a fresh lab, the WAN in place from the start: leave out --lab-dir")
    if opts["lab_dir"] and opts["mode"] == "both":
        raise click.UsageError("--lab-dir: run one mode per run (the fault changes the lab)")
    try:
        check_prerequisites()
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    _run_all(opts, run_modes(opts))


def _run_all(opts: dict, modes: tuple[str, ...]) -> None:
    if opts["report_dir"] and (missing := report.plotting_missing()):
        raise click.UsageError(missing)  # before the run, not after it
    raise_nofile()
    signal.signal(signal.SIGTERM, _interrupted)  # `kill PID` tears down like Ctrl-C: nodes and workers stopped
    runs = {}
    for mode in modes:
        console.rule(f"{mode} mode: {opts['users']} users, fault {opts['fault']}")
        runs[mode] = run_mode(opts, mode)
    for summary in report.tables(runs):
        console.print(summary)
    if "standard" in runs:
        console.print(report.resumption_table(runs))
    if opts["report_dir"]:
        directory = Path(opts["report_dir"])
        path = report.write_json(directory, {"runs": runs, "options": dict(opts.items())})
        for plot in report.write_plots(directory, runs):
            console.print(f"plot: {plot}")
        console.print(f"report: {path}")
