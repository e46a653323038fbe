"""Database replication checks (SPEC §7; the source's `utils dbreplication ...`).

Rules of this module:
- `status` reports table mismatches; `runtimestate` reports, per node, the
  replication setup value (2 = healthy) and when the node last reached the database.
- `--replica URL` (repeatable) names databases the nodes read from (PostgreSQL
  streaming standbys, or any copy); their tables' row counts are compared with the
  primary's. Without it only the primary's own view is reported.
- Exit status 1 when replication is not healthy, so scripts can gate on it.
"""

from __future__ import annotations

import contextlib

import click
from sqlalchemy.engine import make_url

from presence_ha.db.replication import ReplicationReport, replication_status
from presence_ha.server.cli.common import db_options
from presence_ha.server.cli.database import echo_table, open_session, run

replica_option = click.option(
    "--replica", "replicas", multiple=True, metavar="URL",
    help="A replica database to compare with (repeatable).",
)


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


def _finish(report: ReplicationReport) -> None:
    click.echo(f"verdict: {'healthy' if report.healthy else 'NOT healthy'} - {report.summary}")
    if not report.healthy:
        raise click.exceptions.Exit(1)


@dbreplication_group.command("status")
@replica_option
@db_options
def status(db_url: str, replicas: tuple[str, ...]) -> None:
    """Table mismatches between the primary and each --replica."""
    report = run(_report(db_url, replicas))
    click.echo(f"backend: {report.backend} ({report.role})")
    click.echo(f"tables compared: {report.tables_compared}   mismatches: {len(report.mismatches)}")
    if report.mismatches:
        echo_table(
            ("table", "replica", "primary rows", "replica rows"),
            [(m.table, m.replica, m.primary_rows, m.replica_rows) for m in report.mismatches],
        )
    _finish(report)


@dbreplication_group.command("runtimestate")
@replica_option
@db_options
def runtimestate(db_url: str, replicas: tuple[str, ...]) -> None:
    """Per node: replication setup value (2 = healthy) and last database contact."""
    report = run(_report(db_url, replicas))
    click.echo(f"backend: {report.backend} ({report.role})")
    if report.standbys:
        echo_table(
            ("standby", "address", "state", "sync", "replay lag"),
            [(s.name, s.client_addr, s.state, s.sync_state, s.replay_lag) for s in report.standbys],
        )
    echo_table(
        ("node", "replication setup", "last seen in database"),
        [(n.node, n.setup_value, n.last_seen.isoformat(timespec="seconds") if n.last_seen else None)
         for n in report.nodes],
    )
    _finish(report)
