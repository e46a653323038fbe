"""Shared presence records: the last available presence of each resource.

Rules of this module:
- One row per (user, resource), written on every presence broadcast and deleted when
  the resource becomes unavailable, so any node can answer a probe for a user served
  elsewhere (RFC 6121 §4.3.2).
- `node_id` tells which node wrote the row; `delete_for_node` clears the rows of a
  node that restarts (its sessions are gone).
- `write_many` applies a batch of writes (upserts and deletes) in the caller's one
  transaction with the dialect's native upsert (one statement per row, no read first):
  `server.presence_writes` group-commits the node's presence traffic through it.
- Functions take an `AsyncSession` and return plain values; the caller owns the
  transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sqlalchemy import Integer, String, Text, bindparam, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import rowcount
from presence_ha.db.models import Cluster, Node, PresenceRecord, User
from presence_ha.db.roster import user_id_of


@dataclass(frozen=True)
class PresenceRow:
    resource: str
    priority: int
    stanza: str


_NODE_ID = select(Node.id).where(Node.name == bindparam("name"))


async def _node_id(session: AsyncSession, node_name: str | None) -> int | None:
    if node_name is None:
        return None
    return (await session.execute(_NODE_ID, {"name": node_name})).scalar_one_or_none()


def _upsert_statement(dialect: ModuleType) -> Any:  # the postgresql or sqlite dialect module
    """One upsert of a record, with bound values (built once per dialect and reused)."""
    stmt = dialect.insert(PresenceRecord).values(
        user_id=bindparam("uid"), resource=bindparam("res"), node_id=bindparam("node"),
        priority=bindparam("prio"), stanza=bindparam("stanza"), updated_at=func.now(),
    )
    return stmt.on_conflict_do_update(
        index_elements=["user_id", "resource"],
        set_={"node_id": stmt.excluded.node_id, "priority": stmt.excluded.priority,
              "stanza": stmt.excluded.stanza, "updated_at": func.now()},
    )


_UPSERT = {"postgresql": _upsert_statement(postgresql), "sqlite": _upsert_statement(sqlite)}
_DELETE = (
    delete(PresenceRecord)
    .where(PresenceRecord.user_id == bindparam("uid"), PresenceRecord.resource == bindparam("res"))
    .execution_options(synchronize_session=False)  # no ORM objects to keep in step
)


async def upsert(
    session: AsyncSession, uid: int, resource: str, priority: int, stanza: str, node_name: str | None
) -> None:
    node_id = await _node_id(session, node_name)
    stmt = select(PresenceRecord).where(PresenceRecord.user_id == uid, PresenceRecord.resource == resource)
    row = (await session.scalars(stmt.with_for_update())).one_or_none()
    if row is None:
        row = PresenceRecord(user_id=uid, resource=resource)
        session.add(row)
    row.node_id = node_id
    row.priority = priority
    row.stanza = stanza
    row.updated_at = func.now()
    await session.flush()


async def write_many(
    session: AsyncSession, writes: Mapping[tuple[int, str], tuple[int, str] | None], node_name: str | None
) -> None:
    """Apply `(uid, resource) -> (priority, stanza)` upserts, or deletes for None."""
    node_id = await _node_id(session, node_name)
    upsert = _UPSERT["postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"]
    for (uid, resource), value in writes.items():
        if value is None:
            await delete_one(session, uid, resource)
            continue
        await session.execute(upsert, {"uid": uid, "res": resource, "node": node_id,
                                       "prio": value[0], "stanza": value[1]})


def _uid_of_name():
    """The id of the user named :name in the cluster of :domain (no row: no such user)."""
    cluster = select(Cluster.id).where(Cluster.domain == bindparam("domain")).scalar_subquery()
    return select(User.id).where(User.cluster_id == cluster, User.username == bindparam("name"))


def _batch_upsert_statement(dialect: ModuleType) -> Any:  # the postgresql or sqlite dialect module
    """Upsert of one record by username: the user and node ids are subselects, so a
    batch needs no reads first; an unknown user inserts no row (rowcount 0)."""
    node = select(Node.id).where(Node.name == bindparam("node", type_=String)).scalar_subquery()
    rows = _uid_of_name().add_columns(
        bindparam("res", type_=String), node, bindparam("prio", type_=Integer),
        bindparam("stanza", type_=Text), func.now())
    stmt = dialect.insert(PresenceRecord).from_select(
        ["user_id", "resource", "node_id", "priority", "stanza", "updated_at"], rows)
    return stmt.on_conflict_do_update(
        index_elements=["user_id", "resource"],
        set_={"node_id": stmt.excluded.node_id, "priority": stmt.excluded.priority,
              "stanza": stmt.excluded.stanza, "updated_at": func.now()},
    )


_BATCH_UPSERT = {"postgresql": _batch_upsert_statement(postgresql), "sqlite": _batch_upsert_statement(sqlite)}
_BATCH_DELETE = delete(PresenceRecord).where(
    PresenceRecord.user_id == _uid_of_name().scalar_subquery(), PresenceRecord.resource == bindparam("res"))
_BATCH_KNOWN = _uid_of_name()


def write_batch(conn: Connection, domain: str, node_name: str | None,
                writes: Mapping[tuple[str, str], tuple[int, str] | None]) -> set[str]:
    """Hot path (`db.hotpath`): apply `(username, resource) -> (priority, stanza)`
    upserts, or deletes for None, in order; return the usernames that are no account
    of `domain` (nothing was written for them)."""
    upsert = _BATCH_UPSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    unknown: set[str] = set()
    for (name, resource), value in writes.items():
        params: dict[str, object] = {"domain": domain, "name": name, "res": resource}
        if value is not None:
            params.update(node=node_name, prio=value[0], stanza=value[1])
            written = conn.execute(upsert, params).rowcount
        else:
            written = conn.execute(_BATCH_DELETE, params).rowcount
            if not written:  # nothing to delete, or no such user: tell them apart
                written = conn.execute(_BATCH_KNOWN, params).first() is not None
        if not written:
            unknown.add(name)
    return unknown


async def delete_one(session: AsyncSession, uid: int, resource: str) -> bool:
    result = await session.execute(_DELETE, {"uid": uid, "res": resource})
    return rowcount(result) > 0


_LIST_FOR = (select(PresenceRecord.resource, PresenceRecord.priority, PresenceRecord.stanza)
             .where(PresenceRecord.user_id == bindparam("uid")).order_by(PresenceRecord.resource))
_RECORDS_OF = (
    select(User.username, PresenceRecord.resource, PresenceRecord.priority, PresenceRecord.stanza)
    .join(User, User.id == PresenceRecord.user_id)
    .join(Cluster, Cluster.id == User.cluster_id)
    .where(Cluster.domain == bindparam("domain"), User.username.in_(bindparam("usernames", expanding=True)))
)


async def list_for(session: AsyncSession, uid: int) -> list[PresenceRow]:
    return [PresenceRow(*r) for r in (await session.execute(_LIST_FOR, {"uid": uid})).all()]


def list_of(conn: Connection, domain: str, username: str) -> list[PresenceRow] | None:
    """Hot path (`db.hotpath`): `list_for` by username (None: no such account)."""
    uid = user_id_of(conn, domain, username)
    return None if uid is None else [PresenceRow(*r) for r in conn.execute(_LIST_FOR, {"uid": uid}).all()]


def _grouped(rows) -> dict[str, list[PresenceRow]]:
    found: dict[str, list[PresenceRow]] = {}
    for name, resource, priority, stanza in rows:
        found.setdefault(name, []).append(PresenceRow(resource, priority, stanza))
    return found


async def records_of(session: AsyncSession, domain: str, usernames: Collection[str]) -> dict[str, list[PresenceRow]]:
    """`{username: its records}` for many users of `domain` in one query."""
    if not usernames:
        return {}
    return _grouped((await session.execute(_RECORDS_OF, {"domain": domain, "usernames": list(usernames)})).all())


def records_of_users(conn: Connection, domain: str, usernames: Collection[str]) -> dict[str, list[PresenceRow]]:
    """Hot path (`db.hotpath`): `records_of` (in chunks below SQLite's variable limit)."""
    names, found = list(usernames), {}
    for i in range(0, len(names), 500):
        found.update(_grouped(conn.execute(_RECORDS_OF, {"domain": domain, "usernames": names[i:i + 500]}).all()))
    return found


RETIRE_CHUNK = 500  # records per DELETE statement (bound parameters stay far below any limit)


async def retire_written_by(session: AsyncSession, writer: str, server: str,
                            keep: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
    """Delete the records `writer` wrote for users `server` serves now, except the
    `(username, resource)` pairs in `keep`; returns the pairs deleted. A record
    rewritten meanwhile by another node is not `writer`'s any more and stays."""
    writer_id, server_id = await _node_id(session, writer), await _node_id(session, server)
    if writer_id is None or server_id is None:
        return []
    found = (await session.execute(
        select(PresenceRecord.user_id, User.username, PresenceRecord.resource)
        .join(User, User.id == PresenceRecord.user_id)
        .where(PresenceRecord.node_id == writer_id, User.active_node_id == server_id))).all()
    doomed = [(uid, name, resource) for uid, name, resource in found if (name, resource) not in keep]
    retired: list[tuple[str, str]] = []
    for i in range(0, len(doomed), RETIRE_CHUNK):
        chunk = doomed[i:i + RETIRE_CHUNK]
        gone = set((await session.execute(
            delete(PresenceRecord)
            .where(PresenceRecord.node_id == writer_id,
                   tuple_(PresenceRecord.user_id, PresenceRecord.resource).in_([(uid, r) for uid, _, r in chunk]))
            .returning(PresenceRecord.user_id, PresenceRecord.resource))).all())
        retired += [(name, resource) for uid, name, resource in chunk if (uid, resource) in gone]
    return retired


async def delete_for_node(session: AsyncSession, node_name: str) -> int:
    node_id = await _node_id(session, node_name)
    if node_id is None:
        return 0
    result = await session.execute(delete(PresenceRecord).where(PresenceRecord.node_id == node_id))
    return rowcount(result)
