"""Database replication checks (SPEC §7: `utils dbreplication status|runtimestate`).

Rules of this module:
- Per node a "replication setup" value, where 2 means healthy (as in the source):
  2 set up and consistent; 1 a standby is attached but not streaming yet;
  3 a table mismatch between the primary and a replica; 4 the database the nodes
  write to is a standby in recovery (read-only).
- SQLite: one shared database file, no replication; every node gets 2 because every
  node reads and writes the same single database. Reported as exactly that.
- PostgreSQL: the role comes from `pg_is_in_recovery()`, attached standbys from
  `pg_stat_replication`. Table mismatches are found by comparing row counts of every
  table of `db.models.metadata` on the primary with each replica the caller opened
  (a replica the nodes read from). Counts on a replica lag by the replay delay, so a
  mismatch seen once may be transient: re-run before acting.
- All nodes of a cluster share the one logical database, so the value is the same
  for every node; the per-node lines add when each node last reached the database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import translate_errors
from presence_ha.db.models import Node, NodeHaState, metadata

HEALTHY, NOT_STREAMING, MISMATCH, IN_RECOVERY = 2, 1, 3, 4


@dataclass(frozen=True)
class Standby:
    name: str
    client_addr: str | None
    state: str
    sync_state: str
    replay_lag: str | None


@dataclass(frozen=True)
class TableMismatch:
    table: str
    replica: str
    primary_rows: int
    replica_rows: int


@dataclass(frozen=True)
class NodeReplication:
    node: str
    setup_value: int
    last_seen: dt.datetime | None


@dataclass(frozen=True)
class ReplicationReport:
    backend: str
    role: str
    standbys: tuple[Standby, ...]
    tables_compared: int
    mismatches: tuple[TableMismatch, ...]
    setup_value: int
    nodes: tuple[NodeReplication, ...]
    summary: str

    @property
    def healthy(self) -> bool:
        return self.setup_value == HEALTHY


async def table_counts(session: AsyncSession) -> dict[str, int]:
    """Row count of every table of the schema, by table name."""
    counts = {}
    async with translate_errors():
        for table in metadata.sorted_tables:
            counts[table.name] = (await session.execute(select(func.count()).select_from(table))).scalar_one()
    return counts


async def compare_tables(
    session: AsyncSession, replicas: Mapping[str, AsyncSession]
) -> tuple[int, list[TableMismatch]]:
    """(tables compared, mismatches) between `session`'s database and each replica."""
    if not replicas:
        return 0, []
    primary = await table_counts(session)
    mismatches = []
    for label, replica in replicas.items():
        counts = await table_counts(replica)
        mismatches += [
            TableMismatch(name, label, rows, counts[name]) for name, rows in primary.items() if counts[name] != rows
        ]
    return len(primary) * len(replicas), mismatches


async def _postgres_role(session: AsyncSession) -> tuple[bool, tuple[Standby, ...]]:
    query = text(
        "SELECT application_name, host(client_addr), state, sync_state, replay_lag::text "
        "FROM pg_stat_replication ORDER BY application_name"
    )
    async with translate_errors():
        in_recovery = bool((await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one())
        rows = (await session.execute(query)).all()
    return in_recovery, tuple(Standby(r[0] or "?", r[1], r[2] or "?", r[3] or "?", r[4]) for r in rows)


async def _node_lines(session: AsyncSession, value: int) -> tuple[NodeReplication, ...]:
    query = (select(Node.name, NodeHaState.alive_at)
             .outerjoin(NodeHaState, NodeHaState.node_id == Node.id).order_by(Node.name))
    async with translate_errors():
        rows = (await session.execute(query)).all()
    return tuple(NodeReplication(name, value, alive_at) for name, alive_at in rows)


def _verdict(in_recovery: bool, standbys: tuple[Standby, ...], mismatches: list[TableMismatch]) -> tuple[int, str]:
    if in_recovery:
        return IN_RECOVERY, "the database is a standby in recovery (read-only); point the nodes at the primary"
    lagging = [s.name for s in standbys if s.state != "streaming"]
    if lagging:
        return NOT_STREAMING, f"standby {', '.join(lagging)} attached but not streaming"
    if mismatches:
        return MISMATCH, f"{len(mismatches)} table(s) differ between primary and replica"
    if not standbys:
        return HEALTHY, "primary, no streaming standby attached: one database, nothing to replicate"
    return HEALTHY, f"primary with {len(standbys)} streaming standby(s)"


async def replication_status(
    session: AsyncSession, replicas: Mapping[str, AsyncSession] | None = None
) -> ReplicationReport:
    """The replication report of the database behind `session` (and optional replicas)."""
    backend = session.get_bind().dialect.name
    compared, mismatches = await compare_tables(session, replicas or {})
    if backend == "sqlite":
        standbys: tuple[Standby, ...] = ()
        in_recovery, role = False, "single shared database file, no replication"
        value = MISMATCH if mismatches else HEALTHY
        summary = (
            f"{len(mismatches)} table(s) differ from the compared database file" if mismatches
            else "single shared database file, no replication: setup value 2 for every node (one database)"
        )
    else:
        in_recovery, standbys = await _postgres_role(session)
        role = "standby (in recovery)" if in_recovery else "primary"
        value, summary = _verdict(in_recovery, standbys, mismatches)
    nodes = await _node_lines(session, value)
    return ReplicationReport(backend, role, standbys, compared, tuple(mismatches), value, nodes, summary)
