"""Database replication checks (SPEC §7: `utils dbreplication status|runtimestate`).

Rules of this module:
- Per node a "replication setup" value, where 2 means healthy (as in the source):
  2  a standby streams synchronously (`pg_stat_replication.sync_state` is `sync` or
     `quorum`): a commit is on two hosts;
  1  standbys are attached, but none streams synchronously (asynchronous, catching up,
     or its details are hidden from this database role);
  0  no replication: SQLite (one database file), or a PostgreSQL primary with no
     standby attached;
  3  a table mismatch between the primary and a compared replica;
  4  the database the nodes write to is a standby in recovery (read-only).
- Each standby is reported from `pg_stat_replication` as the primary sees it: name
  (`application_name`), address, state, sync state, the sent/write/flush/replay LSNs,
  the lag in bytes (`pg_wal_lsn_diff` of the current WAL position and the standby's
  replay position) and the write/flush/replay lag in seconds (NULL in PostgreSQL, and
  None here, when the standby is caught up and nothing was written lately).
  PostgreSQL shows these columns only to superusers and `pg_monitor` /
  `pg_read_all_stats` members; hidden ones are reported as hidden, not guessed.
- `fault` is what makes replication broken, not merely absent or asynchronous: in
  recovery, a table mismatch, or a standby attached but not streaming (or hidden).
  Enabling HA (SPEC §3, `db.groups`) is refused on a fault only, so the embedded
  default (SQLite, value 0) and a single PostgreSQL can still run HA pairs.
- Table mismatches are found by comparing row counts of every table of
  `db.models.metadata` on the primary with each replica the caller opened (a replica
  the nodes read from). Counts on a replica lag by the replay delay, so a mismatch
  seen once may be transient: re-run before acting.
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

NO_REPLICATION, NOT_SYNCHRONOUS, HEALTHY, MISMATCH, IN_RECOVERY = 0, 1, 2, 3, 4
SYNCHRONOUS = frozenset({"sync", "quorum"})
HIDDEN = "hidden"  # a standby's state this database role may not read

_STANDBYS = text("""
SELECT application_name, host(client_addr), state, sync_state,
       sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text,
       CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), replay_lsn)
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) END::bigint,
       EXTRACT(EPOCH FROM write_lag)::float8, EXTRACT(EPOCH FROM flush_lag)::float8,
       EXTRACT(EPOCH FROM replay_lag)::float8
FROM pg_stat_replication ORDER BY application_name, client_addr
""")


@dataclass(frozen=True)
class Standby:
    name: str
    client_addr: str | None
    state: str
    sync_state: str
    sent_lsn: str | None
    write_lsn: str | None
    flush_lsn: str | None
    replay_lsn: str | None
    lag_bytes: int | None
    write_lag_s: float | None
    flush_lag_s: float | None
    replay_lag_s: float | None

    @property
    def synchronous(self) -> bool:
        return self.state == "streaming" and self.sync_state in SYNCHRONOUS


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
    fault: str | None  # replication broken (not merely absent): HA may not be enabled

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
    async with translate_errors():
        in_recovery = bool((await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one())
        rows = (await session.execute(_STANDBYS)).all()
    return in_recovery, tuple(
        Standby(r[0] or "?", r[1], r[2] or HIDDEN, r[3] or HIDDEN, *r[4:]) for r in rows)


async def _node_lines(session: AsyncSession, value: int) -> tuple[NodeReplication, ...]:
    query = (select(Node.name, NodeHaState.alive_at)
             .outerjoin(NodeHaState, NodeHaState.node_id == Node.id).order_by(Node.name))
    async with translate_errors():
        rows = (await session.execute(query)).all()
    return tuple(NodeReplication(name, value, alive_at) for name, alive_at in rows)


def _verdict(in_recovery: bool, standbys: tuple[Standby, ...],
             mismatches: list[TableMismatch]) -> tuple[int, str, str | None]:
    """(setup value, summary, fault or None)."""
    if in_recovery:
        fault = "the database is a standby in recovery (read-only); point the nodes at the primary"
        return IN_RECOVERY, fault, fault
    hidden = [s.name for s in standbys if s.state == HIDDEN]
    if hidden:
        fault = (f"standby {', '.join(hidden)} attached, its state hidden from this database role: "
                 "connect as a superuser or a member of pg_monitor")
        return NOT_SYNCHRONOUS, fault, fault
    lagging = [s.name for s in standbys if s.state != "streaming"]
    if lagging:
        fault = f"standby {', '.join(lagging)} attached but not streaming"
        return NOT_SYNCHRONOUS, fault, fault
    if mismatches:
        fault = f"{len(mismatches)} table(s) differ between primary and replica"
        return MISMATCH, fault, fault
    if not standbys:
        return NO_REPLICATION, "primary, no standby attached: no replication", None
    synchronous = [s.name for s in standbys if s.synchronous]
    if not synchronous:
        return NOT_SYNCHRONOUS, (f"{len(standbys)} standby(s) streaming, none synchronously: "
                                 "a commit may be on one host only"), None
    return HEALTHY, f"primary, standby {', '.join(synchronous)} streaming synchronously", None


async def replication_status(
    session: AsyncSession, replicas: Mapping[str, AsyncSession] | None = None
) -> ReplicationReport:
    """The replication report of the database behind `session` (and optional replicas)."""
    backend = session.get_bind().dialect.name
    compared, mismatches = await compare_tables(session, replicas or {})
    if backend == "sqlite":
        standbys: tuple[Standby, ...] = ()
        role = "single shared database file"
        fault = f"{len(mismatches)} table(s) differ from the compared database file" if mismatches else None
        value = MISMATCH if fault else NO_REPLICATION
        summary = fault or "SQLite: one database file, no replication (use PostgreSQL streaming replication)"
    else:
        in_recovery, standbys = await _postgres_role(session)
        role = "standby (in recovery)" if in_recovery else "primary"
        value, summary, fault = _verdict(in_recovery, standbys, mismatches)
    nodes = await _node_lines(session, value)
    return ReplicationReport(backend, role, standbys, compared, tuple(mismatches), value, nodes, summary, fault)
