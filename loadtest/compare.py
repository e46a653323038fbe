"""`bench-compare`: presence-ha and Prosody benchmarked in one run, with the same settings.

Rules:
- Both servers are private and throwaway, on free loopback ports, with their data in
  temp dirs removed at the end: our node runs as a real `presence-ha node run`
  subprocess on a fresh SQLite database (one node, a one-node group, HA off); Prosody is
  `loadtest.prosody.ProsodyInstance`. Both get the same N users (`user0`...), the same
  password, SCRAM keys at the same iteration count (4096), and the same rosters of
  mutual contacts for the presence scenario, written before start.
- Every scenario group (login, chat, presence, each memory level) runs on a freshly
  restarted server (the issue: "with the server restarted before each run"): ours,
  then Prosody, back to back, so both see the same machine. With --repeat the order
  alternates and the run with the median headline figure is reported (all runs are in
  the JSON).
- TLS is on by default for both. With --no-tls our node is configured with
  `tls.required=false`; it offers PLAIN over TLS only, so --no-tls needs a SCRAM --mech.
- The tool reports numbers and their ratio (ours / Prosody), with the direction in
  which a figure is better; it never judges them (no thresholds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
from rich.table import Table

from presence_ha.loadtest.bench import Settings, Target, groups_of, run_benchmark
from presence_ha.loadtest.cli import console, main, scenario_options, settings_from, target_from
from presence_ha.loadtest.localpair import free_ports
from presence_ha.loadtest.prosody import SCRAM_ITERATIONS, ProsodyInstance, _raise_nofile
from presence_ha.loadtest.xmpp_client import XmppClient, XmppError

log = logging.getLogger(__name__)

NODE_NAME = "bench1"
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 20.0
SERVERS = ("ours", "prosody")


# ---- our node as a private benchmark instance --------------------------------------

async def _provision(url: str, domain: str, users: list[tuple[str, str]], ports: dict[str, int],
                     groups: list[list[str]]) -> None:
    """Schema, cluster, one node in a one-node group (HA off), users, mutual rosters."""
    from presence_ha.db import groups as db_groups
    from presence_ha.db import nodes, roster, schema
    from presence_ha.db import users as db_users
    from presence_ha.db.engine import make_engine, make_session_factory
    from presence_ha.server.cluster_key import ClusterKey, create_cluster, key_path

    await schema.upgrade(url)
    key = ClusterKey.load_or_create(key_path(None, None, url))  # beside the SQLite file: the node's data dir
    engine = make_engine(url)
    try:
        async with make_session_factory(engine)() as session:
            await create_cluster(session, "bench", domain, key)
            await nodes.add_node(session, NODE_NAME, host="127.0.0.1", ports=ports)
            await db_groups.add_group(session, "bench", [NODE_NAME])
            await db_users.bulk_import(session, users, iterations=SCRAM_ITERATIONS)
            for group in groups:
                ids = {name: await roster.user_id(session, domain, name) for name in group}
                for name, uid in ids.items():
                    assert uid is not None  # imported above
                    for other in group:
                        if other != name:
                            await roster.put_item(session, uid, roster.RosterRow(
                                f"{other}@{domain}", subscription="both"))
            await session.commit()
    finally:
        await engine.dispose()



@dataclass
class OurInstance:
    """One private presence-ha node process; prepare() once, then start()/stop() at will."""

    domain: str = "example.test"
    user_prefix: str = "user"
    password: str = "secret"
    users: int = 20
    require_tls: bool = True
    verbose: bool = False
    port: int = 0
    base: Path | None = None
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    starts: int = 0
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def db_url(self) -> str:
        assert self.base is not None, "not prepared"
        return f"sqlite:///{self.base / 'presence-ha.sqlite3'}"

    def prepare(self, roster_groups: list[list[int]]) -> None:
        """Temp dir, database, node, users (4096 SCRAM iterations) and rosters."""
        self.base = Path(tempfile.mkdtemp(prefix="bench-presence-ha-"))
        names = ("client_port", "srm_port", "admin_port", "link_port", "metrics_port")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.port = self.ports["client_port"]
        rows = [(f"{self.user_prefix}{i}", self.password) for i in range(self.users)]
        groups = [[f"{self.user_prefix}{i}" for i in g] for g in roster_groups]
        started = time.monotonic()
        asyncio.run(_provision(self.db_url, self.domain, rows, self.ports, groups))
        log.info("presence-ha: %d users provisioned in %.1fs under %s",
                 self.users, time.monotonic() - started, self.base)

    def argv(self) -> list[str]:
        from presence_ha.server.cli.run import node_command

        args = ["node", "run", "--name", NODE_NAME, "--db", self.db_url,
                "--data-dir", str(self.base)]
        if not self.require_tls:
            args += ["--set", "tls.required=false"]
        return node_command(*(["-v"] if self.verbose else []), *args)

    def start(self) -> None:
        """Launch the node and wait until it prints `ready` and its client port accepts."""
        assert self.base is not None, "not prepared"
        self.starts += 1
        self.log_path = self.base / f"node-{self.starts}.log"  # one log per start
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=_raise_nofile, start_new_session=True)
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"presence-ha node exited early: {self.read_logs()}")
            if f"node {NODE_NAME} ready" in self.read_logs() and _accepts(self.port):
                return
            time.sleep(0.1)
        self.stop(keep_dir=True)
        raise RuntimeError(f"presence-ha node not ready within {START_DEADLINE_S}s: {self.read_logs()}")

    def read_logs(self) -> str:
        """Tail of the current start's output, for error messages."""
        path = self.log_path
        return path.read_text(errors="replace")[-2000:] if path and path.exists() else ""

    def stop(self, keep_dir: bool = False) -> None:
        """SIGTERM (graceful shutdown), SIGKILL after the deadline; remove the dir unless kept."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.base is not None and not keep_dir:
            shutil.rmtree(self.base, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def probe_login(target: Target, deadline_s: float = 30.0) -> None:
    """Log user0 in once: the server really serves (not only accepts TCP)."""
    async def once() -> None:
        client = XmppClient(target.client_config(0))
        await client.login()
        await client.close()

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            asyncio.run(once())
            return
        except XmppError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"probe login failed on port {target.port}: {exc}") from exc
            time.sleep(0.5)


# ---- orchestration -----------------------------------------------------------------

def scenario_groups(s: Settings) -> list[tuple[str, Settings]]:
    """(label, settings) of each group that runs on a freshly started server."""
    levels = sorted(s.memory_levels) if "memory" in s.scenarios else []
    out = [(f"memory {level}", replace(s, scenarios=("memory",), memory_levels=(level,)))
           for level in levels if level <= s.users]
    out.extend((name, replace(s, scenarios=(name,)))
               for name in ("login", "chat", "presence") if name in s.scenarios)
    return out


@dataclass
class Servers:
    """Both instances, prepared once; `running(name)` restarts one around a block."""

    ours: OurInstance
    prosody: ProsodyInstance
    targets: dict[str, Target]

    def pid(self, name: str) -> int:
        return self.ours.pid if name == "ours" else self.prosody.pid

    @contextmanager
    def running(self, name: str) -> Iterator[int]:
        server = self.ours if name == "ours" else self.prosody
        server.start()
        try:
            probe_login(self.targets[name])
            yield server.pid
        finally:
            server.stop(keep_dir=True)

    def cleanup(self) -> None:
        self.ours.stop()
        self.prosody.stop()


def prepare_servers(opts: dict, s: Settings) -> Servers:
    groups = groups_of(min(s.presence_users, s.users), s.contacts + 1)
    ours = OurInstance(domain=opts["domain"], user_prefix=opts["user_prefix"],
                       password=opts["password"], users=s.users, require_tls=opts["tls"])
    prosody = ProsodyInstance(domain=opts["domain"], user_prefix=opts["user_prefix"],
                              password=opts["password"], users=s.users,
                              require_tls=opts["tls"], log_level=opts["prosody_log"])
    try:
        prosody.prepare()
        prosody.write_rosters(groups)
        ours.prepare(groups)
    except BaseException:
        ours.stop()
        prosody.stop()
        raise
    targets = {"ours": target_from(opts, "127.0.0.1", ours.port),
               "prosody": target_from(opts, "127.0.0.1", prosody.port)}
    return Servers(ours, prosody, targets)


def run_group(servers: Servers, name: str, settings: Settings) -> dict:
    """One scenario group on a freshly started server; a failure is reported, not raised,
    so one broken group does not cost the figures of the others."""
    try:
        with servers.running(name) as pid:
            return run_benchmark(servers.targets[name], settings, pid)
    except (RuntimeError, TimeoutError, OSError, EOFError) as exc:  # EOF: a generator died
        log.error("%s: %s failed: %r", name, settings.scenarios, exc)
        return {"results": {}, "host": {}, "error": repr(exc)}


def run_compare(servers: Servers, s: Settings, repeat: int = 1,
                progress: Callable[[str], None] = lambda _msg: None,
                partial: Callable[[dict], None] = lambda _result: None) -> dict:
    """Every scenario group on each server in turn, each on a fresh start; JSON-ready.
    `partial` gets the result so far after each group (a long run keeps what it measured)."""
    runs: dict[str, dict[str, list[dict]]] = {name: {} for name in SERVERS}
    for label, settings in scenario_groups(s):
        for rep in range(repeat):
            order = SERVERS if rep % 2 == 0 else tuple(reversed(SERVERS))
            for name in order:
                progress(f"{label}: {name} (run {rep + 1}/{repeat})")
                runs[name].setdefault(label, []).append(run_group(servers, name, settings))
        partial(summarize(servers, s, repeat, runs))
    return summarize(servers, s, repeat, runs)


def summarize(servers: Servers, s: Settings, repeat: int, runs: dict) -> dict:
    chosen = {name: {label: median_run(label, results) for label, results in by_label.items()}
              for name, by_label in runs.items()}
    results = {name: merge(by_label) for name, by_label in chosen.items()}
    out = {"settings": asdict(s), "repeat": repeat,
           "target": {k: v for k, v in asdict(servers.targets["ours"]).items()
                      if k not in ("password", "port")},
           "ports": {name: t.port for name, t in servers.targets.items()},
           "results": results, "runs": runs}
    out["comparison"] = comparison(results["ours"], results["prosody"])
    return out


# ---- figures -----------------------------------------------------------------------

def _get(tree: dict, path: tuple) -> float | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree if isinstance(tree, (int, float)) else None


def headline(label: str) -> tuple:
    """The figure that picks the median of repeated runs of a scenario group."""
    if label.startswith("memory"):
        return ("memory", 0, "kb_per_session")
    return {"login": ("login", "achieved_per_s"), "chat": ("chat", "p50_ms"),
            "presence": ("presence", "fanout", "p50_ms")}[label]


def median_run(label: str, results: list[dict]) -> dict:
    path = headline(label)

    def key(result: dict) -> float:
        tree = result["results"]
        if path[0] == "memory":
            tree = {"memory": dict(enumerate(tree.get("memory", [])))}
        value = _get(tree, path)
        return math.inf if value is None or math.isnan(value) else value
    ordered = sorted(results, key=key)
    return ordered[(len(ordered) - 1) // 2]


def merge(by_label: dict[str, dict]) -> dict:
    """One result tree out of the per-group runs (memory levels joined in one list)."""
    merged: dict = {"memory": []}
    for label, result in by_label.items():
        res = result["results"]
        if "error" in result:
            merged.setdefault("errors", {})[label] = result["error"]
        if label.startswith("memory"):
            merged["memory"].extend(res.get("memory", []))
        else:
            merged.update(res)
        merged.setdefault("host", {})[label] = result["host"]
    if not merged["memory"]:
        del merged["memory"]
    return merged


# (row label, path in a merged result, unit, better: "higher" / "lower" / "")
FIGURES: list[tuple[str, tuple, str, str]] = [
    ("login rate", ("login", "achieved_per_s"), "logins/s", "higher"),
    ("login ok", ("login", "ok"), "logins", "higher"),
    ("login failed", ("login", "failed"), "logins", "lower"),
    ("login p50", ("login", "p50_ms"), "ms", "lower"),
    ("login p99", ("login", "p99_ms"), "ms", "lower"),
    ("login server CPU", ("login", "server_cpu_ms_per_op"), "ms/login", "lower"),
    ("chat rate", ("chat", "achieved_per_s"), "msg/s", "higher"),
    ("chat lost", ("chat", "lost"), "msgs", "lower"),
    ("chat p50", ("chat", "p50_ms"), "ms", "lower"),
    ("chat p99", ("chat", "p99_ms"), "ms", "lower"),
    ("chat server CPU", ("chat", "server_cpu_ms_per_op"), "ms/msg", "lower"),
    ("presence complete", ("presence", "complete"), "broadcasts", "higher"),
    ("presence fan-out p50", ("presence", "fanout", "p50_ms"), "ms", "lower"),
    ("presence fan-out p99", ("presence", "fanout", "p99_ms"), "ms", "lower"),
    ("presence delivery p99", ("presence", "delivery", "p99_ms"), "ms", "lower"),
    ("presence server CPU", ("presence", "server_cpu_ms_per_op"), "ms/broadcast", "lower"),
]


def figures(merged: dict) -> dict[str, tuple[float | None, str, str]]:
    out = {}
    for label, path, unit, better in FIGURES:
        if path[0] in merged:
            out[label] = (_get(merged, path), unit, better)
    for level in merged.get("memory", []):
        n = level["sessions"]
        out[f"memory {n} sessions"] = (level.get("kb_per_session"), "kB/session", "lower")
        out[f"memory {n} held"] = (level.get("held"), "sessions", "higher")
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return None
    return round(ours / theirs, 3)


def comparison(ours: dict, prosody: dict) -> list[dict]:
    mine, theirs = figures(ours), figures(prosody)
    rows = []
    for label in dict.fromkeys([*mine, *theirs]):
        _value, unit, better = mine.get(label) or theirs[label]
        a = mine[label][0] if label in mine else None
        b = theirs[label][0] if label in theirs else None
        rows.append({"figure": label, "unit": unit, "better": better, "ours": a,
                     "prosody": b, "ratio": ratio(a, b)})
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


def render(result: dict) -> Table:
    t = result["target"]
    table = Table(title=f"presence-ha vs Prosody  tls={t['tls']}  mech={t['mech']}"
                        f"  users={result['settings']['users']}  repeat={result['repeat']}")
    for col in ("figure", "unit", "ours", "prosody", "ours/prosody", "better"):
        table.add_column(col, justify="left" if col in ("figure", "unit", "better") else "right")
    for row in result["comparison"]:
        table.add_row(row["figure"], row["unit"], _fmt(row["ours"]), _fmt(row["prosody"]),
                      _fmt(row["ratio"], 3), row["better"])
    return table


def finish(result: dict, json_path: str | None) -> None:
    console.print(render(result))
    load = [h.get("loadavg_start", [math.nan])[0] for r in result["results"].values()
            for h in r.get("host", {}).values()]
    if load:
        console.print(f"host: {os.cpu_count()} CPUs, load average at scenario starts "
                      f"{min(load):.2f}..{max(load):.2f} (other load skews the figures)")
    for name, res in result["results"].items():
        for label, error in res.get("errors", {}).items():
            console.print(f"[red]{name} {label} failed:[/red] {error}")
    if json_path:
        write_json(result, json_path)
        console.print(f"JSON written to {json_path}")


def write_json(result: dict, json_path: str | None) -> None:
    if json_path:
        with open(json_path, "w") as out:
            json.dump(result, out, indent=2, default=str)


@main.command("bench-compare")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 9),
              help="Runs per scenario and server (alternating order); the median is shown.")
@click.option("--prosody-log", default="warn", show_default=True)
@click.option("--keep/--no-keep", default=False, help="Keep the temp dirs (logs) for inspection.")
@scenario_options
def bench_compare(repeat: int, prosody_log: str, keep: bool, **opts) -> None:
    """Benchmark presence-ha and a private Prosody with the same settings; print both and the ratio."""
    logging.basicConfig(level=logging.DEBUG if opts["verbose"] else logging.WARNING)
    if not opts["tls"] and opts["mech"] == "PLAIN":
        raise click.BadParameter("presence-ha offers PLAIN over TLS only: use --tls or a SCRAM "
                                 "mechanism", param_hint="--mech")
    if shutil.which("prosody") is None:
        raise click.ClickException("prosody is not installed (apt-get install prosody)")
    settings = settings_from(opts)
    opts["prosody_log"] = prosody_log
    console.print(f"provisioning {settings.users} users on both servers...")
    servers = prepare_servers(opts, settings)
    try:
        result = run_compare(servers, settings, repeat,
                             lambda msg: console.print(f"[bold]running {msg}[/bold]"),
                             lambda part: write_json(part, opts["json_path"]))
    finally:
        if keep:
            console.print(f"kept: {servers.ours.base} {servers.prosody.base}")
        else:
            servers.cleanup()
    finish(result, opts["json_path"])


# `bench-compare` defaults to TLS on (presence-ha requires STARTTLS unless told otherwise),
# unlike `bench` and `bench-prosody`, which share the option list.
for _param in bench_compare.params:
    if _param.name == "tls":
        _param.default = True

# The `loadtest` group with `bench-compare` on it: what `presence-ha loadtest` runs.
loadtest_group = main
