"""Database replication checks (SPEC §7; the source's `utils dbreplication ...`).

Rules of this module:
- Both commands show the database's role and each standby the primary streams to
  (`pg_stat_replication`: sync state, lag in bytes and seconds) and the replication
  setup value (`db.replication`: 2 only when a standby streams synchronously, 0 when
  there is no replication at all, as on SQLite). `status` adds the table mismatches,
  `runtimestate` the per-node lines (setup value, last database contact).
- `--json` prints the whole report as one JSON object (same keys for both commands).
- `--replica URL` (repeatable) names databases the nodes read from (PostgreSQL
  streaming standbys, or any copy); their tables' row counts are compared with the
  primary's. Without it only the primary's own view is reported.
- Exit status 1 unless the setup value is 2, so scripts can gate on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

import click
from sqlalchemy.engine import make_url

from presence_ha.db.replication import (
    HEALTHY,
    IN_RECOVERY,
    MISMATCH,
    NO_REPLICATION,
    NOT_SYNCHRONOUS,
    ReplicationReport,
    Standby,
    replication_status,
)
from presence_ha.server.cli.common import db_options
from presence_ha.server.cli.database import echo_table, json_help, open_session, run

replica_option = click.option(
    "--replica", "replicas", multiple=True, metavar="URL",
    help="A replica database to compare with (repeatable).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys below).")
REPORT_JSON = json_help("""{"backend": "sqlite"|"postgresql", "role", "setup_value": 0-4, "meaning", "healthy": bool,
  "summary", "fault": TEXT or null, "tables_compared",
  "standbys": [{"name", "client_addr", "state", "sync_state", "sent_lsn", "write_lsn", "flush_lsn",
                "replay_lsn", "lag_bytes", "write_lag_s", "flush_lag_s", "replay_lag_s"}],
  "mismatches": [{"table", "replica", "primary_rows", "replica_rows"}],
  "nodes": [{"node", "setup_value", "last_seen": ISO 8601 or null}]}""")

MEANING = {NO_REPLICATION: "no replication", NOT_SYNCHRONOUS: "no synchronous standby", HEALTHY: "healthy",
           MISMATCH: "tables differ", IN_RECOVERY: "database in recovery"}


@click.group("dbreplication")
def dbreplication_group() -> None:
    """Check the availability database's replication (setup value 2 = healthy)."""


def _label(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _report(db_url: str, replicas: tuple[str, ...]) -> ReplicationReport:
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(open_session(db_url))
        others = {_label(url): await stack.enter_async_context(open_session(url)) for url in replicas}
        return await replication_status(session, others)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _standby_row(s: Standby) -> tuple[object, ...]:
    return (s.name, s.client_addr, s.state, s.sync_state, "-" if s.lag_bytes is None else s.lag_bytes,
            _seconds(s.write_lag_s), _seconds(s.flush_lag_s), _seconds(s.replay_lag_s), s.replay_lsn or "-")


def _echo_head(report: ReplicationReport) -> None:
    click.echo(f"backend: {report.backend} ({report.role})")
    click.echo(f"replication setup: {report.setup_value} ({MEANING[report.setup_value]})")
    if report.backend == "sqlite":
        click.echo("standbys: none (SQLite has no replication)")
    elif not report.standbys:
        click.echo("standbys: none attached (pg_stat_replication is empty)")
    else:
        echo_table(("standby", "address", "state", "sync", "lag bytes", "write lag s", "flush lag s",
                    "replay lag s", "replay lsn"), [_standby_row(s) for s in report.standbys])


def _as_json(report: ReplicationReport) -> str:
    data = dataclasses.asdict(report)
    data["healthy"] = report.healthy
    data["meaning"] = MEANING[report.setup_value]
    for node in data["nodes"]:
        node["last_seen"] = node["last_seen"].isoformat() if node["last_seen"] else None
    return json.dumps(data)


def _finish(report: ReplicationReport, as_json: bool) -> None:
    if as_json:
        click.echo(_as_json(report))
    else:
        verdict = "healthy" if report.healthy else "NOT healthy"
        click.echo(f"verdict: {verdict} - {report.summary}")
    if not report.healthy:
        raise click.exceptions.Exit(1)


@dbreplication_group.command("status", epilog=REPORT_JSON)
@replica_option
@json_option
@db_options
def status(db_url: str, replicas: tuple[str, ...], as_json: bool) -> None:
    """Standbys, their sync state and lag, and table mismatches with each --replica."""
    report = run(_report(db_url, replicas))
    if not as_json:
        _echo_head(report)
        click.echo(f"tables compared: {report.tables_compared}   mismatches: {len(report.mismatches)}")
        if report.mismatches:
            echo_table(
                ("table", "replica", "primary rows", "replica rows"),
                [(m.table, m.replica, m.primary_rows, m.replica_rows) for m in report.mismatches],
            )
    _finish(report, as_json)


@dbreplication_group.command("runtimestate", epilog=REPORT_JSON)
@replica_option
@json_option
@db_options
def runtimestate(db_url: str, replicas: tuple[str, ...], as_json: bool) -> None:
    """Standbys, and per node the replication setup value (2 = healthy) and last database contact."""
    report = run(_report(db_url, replicas))
    if not as_json:
        _echo_head(report)
        echo_table(
            ("node", "replication setup", "last seen in database"),
            [(n.node, n.setup_value, n.last_seen.isoformat(timespec="seconds") if n.last_seen else None)
             for n in report.nodes],
        )
    _finish(report, as_json)
