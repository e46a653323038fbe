"""Command line of the load tester: `bench` (any server) and `bench-prosody` (private Prosody).

Rules:
- Both commands take the same scenario options, so a comparison is two runs that differ
  only in the target. Results go to stdout as a rich table and, with --json, to a file.
- The tool reports numbers; it never judges them (no pass/fail thresholds).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from presence_ha.loadtest.bench import SCENARIOS, Settings, Target, groups_of, run_benchmark
from presence_ha.loadtest.prosody import ProsodyInstance
from presence_ha.loadtest.xmpp_client import MECHANISMS

log = logging.getLogger(__name__)
console = Console(width=max(Console().width, 150))  # the table is wide


def _csv(kind: type) -> Callable:
    def convert(_ctx, _param, value: str) -> tuple:
        return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
    return convert


SCENARIO_OPTIONS = [
    click.option("--domain", default="example.test", show_default=True),
    click.option("--user-prefix", default="user", show_default=True),
    click.option("--password", default="secret", show_default=True),
    click.option("--users", default=1000, show_default=True, help="Users that exist."),
    click.option("--tls/--no-tls", default=False, show_default=True),
    click.option("--mech", type=click.Choice(MECHANISMS), default="PLAIN", show_default=True),
    click.option("--sm/--no-sm", default=False, show_default=True, help="XEP-0198 enable."),
    click.option("--scenarios", default=",".join(SCENARIOS), show_default=True,
                 callback=_csv(str)),
    click.option("--workers", default=2, show_default=True, help="Load-generator processes."),
    click.option("--source-ips", default="", callback=_csv(str),
                 help="Comma-separated local addresses (127.0.0.x) to spread ports over."),
    click.option("--setup-rate", default=500.0, show_default=True,
                 help="Logins/s used to set up the chat, presence and memory scenarios."),
    click.option("--login-count", default=0, help="Logins to offer (0: --users)."),
    click.option("--login-rate", default=500.0, show_default=True),
    click.option("--chat-pairs", default=100, show_default=True),
    click.option("--chat-rate", default=1000.0, show_default=True, help="Messages/s offered."),
    click.option("--chat-duration", default=10.0, show_default=True),
    click.option("--contacts", default=20, show_default=True),
    click.option("--presence-users", default=210, show_default=True),
    click.option("--presence-rate", default=50.0, show_default=True,
                 help="Presence broadcasts/s offered."),
    click.option("--presence-duration", default=10.0, show_default=True),
    click.option("--memory-levels", default="1000,10000", show_default=True, callback=_csv(int)),
    click.option("--settle", default=3.0, show_default=True,
                 help="Seconds to wait before reading RSS."),
    click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None),
    click.option("-v", "--verbose", is_flag=True),
]


def scenario_options(func: Callable) -> Callable:
    for option in reversed(SCENARIO_OPTIONS):
        func = option(func)
    return func


def settings_from(opts: dict) -> Settings:
    unknown = set(opts["scenarios"]) - set(SCENARIOS)
    if unknown:
        raise click.BadParameter(f"unknown scenarios {sorted(unknown)}", param_hint="--scenarios")
    return Settings(
        users=opts["users"], workers=opts["workers"], setup_rate=opts["setup_rate"],
        login_count=opts["login_count"], login_rate=opts["login_rate"],
        chat_pairs=opts["chat_pairs"], chat_rate=opts["chat_rate"],
        chat_duration_s=opts["chat_duration"], contacts=opts["contacts"],
        presence_users=opts["presence_users"], presence_rate=opts["presence_rate"],
        presence_duration_s=opts["presence_duration"], memory_levels=opts["memory_levels"],
        settle_s=opts["settle"], scenarios=opts["scenarios"],
    )


def target_from(opts: dict, host: str, port: int) -> Target:
    return Target(host, port, opts["domain"], opts["user_prefix"], opts["password"],
                  tls=opts["tls"], mech=opts["mech"], sm=opts["sm"],
                  source_ips=opts["source_ips"])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.2f}"
    return "-" if value is None else str(value)


def render(result: dict) -> Table:
    """One row per scenario (and memory level), the figures worth comparing."""
    table = Table(title=f"XMPP benchmark  {result['target']['host']}:{result['target']['port']}"
                        f"  tls={result['target']['tls']}  mech={result['target']['mech']}")
    for col in ("scenario", "offered", "achieved/s", "ok", "failed/lost",
                "p50 ms", "p99 ms", "server CPU ms/op", "extra"):
        table.add_column(col, justify="left" if col in ("scenario", "extra") else "right")
    res = result["results"]
    if "login" in res:
        r = res["login"]
        table.add_row("login", f"{r['offered']} @ {r['offered_rate']:g}/s", _fmt(r["achieved_per_s"]),
                      _fmt(r["ok"]), _fmt(r["failed"]), _fmt(r["p50_ms"]), _fmt(r["p99_ms"]),
                      _fmt(r.get("server_cpu_ms_per_op")), "")
    if "chat" in res:
        r = res["chat"]
        table.add_row("chat", f"{r['sent']} @ {r['offered_rate']:g}/s", _fmt(r["achieved_per_s"]),
                      _fmt(r["received"]), _fmt(r["lost"]), _fmt(r["p50_ms"]), _fmt(r["p99_ms"]),
                      _fmt(r.get("server_cpu_ms_per_op")), f"{r['pairs']} pairs")
    if "presence" in res:
        r, f = res["presence"], res["presence"]["fanout"]
        table.add_row("presence fan-out", f"{r['broadcasts']} @ {r['offered_rate']:g}/s", "-",
                      _fmt(r["complete"]), _fmt(r["broadcasts"] - r["complete"]),
                      _fmt(f["p50_ms"]), _fmt(f["p99_ms"]), _fmt(r.get("server_cpu_ms_per_op")),
                      f"{r['contacts']} contacts, delivery p99 {_fmt(r['delivery']['p99_ms'])} ms")
    for r in res.get("memory", []):
        table.add_row(f"memory {r['sessions']}", str(r["sessions"]), "-", _fmt(r["held"]),
                      _fmt(r["setup_failures"]), "-", "-", "-",
                      f"{_fmt(r['kb_per_session'])} kB/session (RSS {_fmt(r['rss_baseline_kb'])}"
                      f" -> {_fmt(r['rss_after_kb'])} kB)")
    return table


def finish(result: dict, json_path: str | None) -> None:
    console.print(render(result))
    host = result["host"]
    console.print(f"host: {host['cpus']} CPUs, load average {host['loadavg_start'][0]:.2f} at start, "
                  f"{host['loadavg_end'][0]:.2f} at end (other load skews the figures)")
    if json_path:
        with open(json_path, "w") as out:
            json.dump(result, out, indent=2, default=str)
        console.print(f"JSON written to {json_path}")


def _progress(name: str) -> None:
    console.print(f"[bold]running scenario {name}[/bold]")


@click.group(name="loadtest")
def main() -> None:
    """XMPP load tests against any server (compare presence-ha with Prosody)."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5222, show_default=True)
@click.option("--server-pid", type=int, default=None, help="Server PID for RSS/CPU sampling.")
@scenario_options
def bench(host: str, port: int, server_pid: int | None, **opts) -> None:
    """Benchmark a running server whose users already exist."""
    logging.basicConfig(level=logging.DEBUG if opts["verbose"] else logging.WARNING)
    result = run_benchmark(target_from(opts, host, port), settings_from(opts), server_pid,
                           _progress)
    finish(result, opts["json_path"])


@main.command("bench-prosody")
@click.option("--prosody-log", default="warn", show_default=True,
              help="Prosody log level (debug slows it down).")
@scenario_options
def bench_prosody(prosody_log: str, **opts) -> None:
    """Start a private Prosody, provision users and rosters, benchmark it, stop it."""
    logging.basicConfig(level=logging.DEBUG if opts["verbose"] else logging.WARNING)
    settings = settings_from(opts)
    server = ProsodyInstance(domain=opts["domain"], user_prefix=opts["user_prefix"],
                             password=opts["password"], users=opts["users"],
                             require_tls=opts["tls"], log_level=prosody_log)
    server.prepare()
    server.write_rosters(groups_of(min(settings.presence_users, settings.users),
                                   settings.contacts + 1))
    with server:
        console.print(f"prosody pid {server.pid} on 127.0.0.1:{server.port}")
        result = run_benchmark(target_from(opts, "127.0.0.1", server.port), settings,
                               server.pid, _progress)
    result["server"] = "prosody"
    finish(result, opts["json_path"])


from presence_ha.loadtest.failover import failover_command  # noqa: E402 - registered after `main` exists
from presence_ha.loadtest.soak import soak_command  # noqa: E402 - registered after `main` exists

main.add_command(failover_command)
main.add_command(soak_command)

if __name__ == "__main__":
    main()
