"""SRM persistence: node HA states, liveness, the HA event log and fenced user moves.

Rules of this module:
- States and reasons are stored as SPEC §6 display strings; writes validate them
  against `HA_STATES` / `HA_REASONS` (the same words as `server.srm.table`).
- A user move is ONE transaction that compares and sets the group's epoch and the
  users' `active_node_id` (STYLE §3, SPEC §9). The epoch update comes first, so on
  SQLite the transaction takes the write lock before it reads anything, and on
  PostgreSQL a concurrent mover blocks on the group row and then finds the epoch
  moved. The loser gets `FencingConflict`; nothing of its move is written.
- `move_users`/`restore_users` commit; start them with no other pending work in
  the session. Other writes commit too; reads do not.
- A node counts as failed over (user additions refused, SPEC §2) while its state is
  in `FAILED_OVER_STATES`: the failed-over side's states, Idle, and the backup's
  states (the backup's row is the fresh one when the failed node cannot write).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import rowcount, translate_errors
from presence_ha.db.errors import FencingConflict, InvalidValue, NotFound
from presence_ha.db.models import HaEvent, Node, NodeHaState, RedundancyGroup, User

HA_STATES = (
    "Initializing", "Idle", "Normal", "Running in Backup Mode", "Taking Over", "Failing Over",
    "Failed Over", "Failed Over with Critical Services Not Running", "Falling Back",
    "Taking Back", "Running in Failed Mode", "Unknown", "Backup Activated",
    "Failover Affected Services",
)
HA_REASONS = (
    "Normal", "On Admin Request", "Initialization", "Automatic Fallback",
    "Critical Services Down", "Database Failure", "Critical Service Start Failed",
    "Peer Down", "Peer Reboot", "Peer Down During Initialization", "Take Over Users Failed",
    "Take Back Users Failed", "Unknown", "Auto Recover Database Failure",
    "Auto Recover Critical Service Down",
)
FAILED_OVER_STATES = frozenset({
    "Failing Over", "Idle", "Failed Over", "Failed Over with Critical Services Not Running",
    "Taking Back", "Taking Over", "Running in Backup Mode", "Falling Back",
})


@dataclass(frozen=True)
class HaState:
    node: str
    state: str
    reason: str
    since: dt.datetime | None
    epoch: int
    alive_at: dt.datetime | None


@dataclass(frozen=True)
class HaEventRecord:
    node: str
    at: dt.datetime | None
    from_state: str
    to_state: str
    reason: str
    event: str


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def validate_state(state: str, reason: str) -> None:
    if state not in HA_STATES:
        raise InvalidValue("state", f"{state!r} is not a SPEC §6 node state")
    if reason not in HA_REASONS:
        raise InvalidValue("reason", f"{reason!r} is not a SPEC §6 reason")


async def _node_id(session: AsyncSession, node_name: str) -> int:
    async with translate_errors():
        node_id = (await session.execute(select(Node.id).where(Node.name == node_name))).scalar()
    if node_id is None:
        raise NotFound(f"node {node_name!r} does not exist")
    return node_id


async def read_state(session: AsyncSession, node_name: str) -> HaState | None:
    """The stored HA state of `node_name`, or None if its SRM never wrote one."""
    query = select(NodeHaState).join(Node, Node.id == NodeHaState.node_id).where(Node.name == node_name)
    async with translate_errors():
        row = (await session.execute(query)).scalars().first()
    return HaState(node_name, row.state, row.reason, row.since, row.epoch, row.alive_at) if row else None


async def write_state(
    session: AsyncSession, node_name: str, state: str, reason: str, *, event: str = "", epoch: int | None = None
) -> HaState:
    """Store a node's state/reason (upsert), log the transition as an HA event; commit."""
    validate_state(state, reason)
    node_id = await _node_id(session, node_name)
    now = utcnow()
    async with translate_errors():
        row = await session.get(NodeHaState, node_id)
        if row is None:
            row = NodeHaState(node_id=node_id, state="Initializing", reason="Initialization", since=now, epoch=0)
            session.add(row)
        previous = row.state
        if (row.state, row.reason) != (state, reason):
            row.since = now  # `since` is when the current state/reason pair began
        row.state, row.reason, row.alive_at = state, reason, now
        if epoch is not None:
            row.epoch = epoch
        session.add(HaEvent(node_id=node_id, at=now, from_state=previous, to_state=state, reason=reason, event=event))
        await session.commit()
        return HaState(node_name, row.state, row.reason, row.since, row.epoch, row.alive_at)


async def renew_alive(session: AsyncSession, node_name: str, at: dt.datetime | None = None) -> None:
    """Record that `node_name` reached the database at `at` (default now); commit."""
    node_id = await _node_id(session, node_name)
    async with translate_errors():
        result = await session.execute(
            update(NodeHaState).where(NodeHaState.node_id == node_id).values(alive_at=at or utcnow())
        )
        if rowcount(result) == 0:
            session.add(NodeHaState(node_id=node_id, alive_at=at or utcnow(), epoch=0))
        await session.commit()


async def append_event(
    session: AsyncSession, node_name: str, from_state: str, to_state: str, reason: str, event: str
) -> None:
    """Add one line to the HA event log without changing the stored state; commit."""
    validate_state(to_state, reason)
    node_id = await _node_id(session, node_name)
    async with translate_errors():
        session.add(HaEvent(node_id=node_id, at=utcnow(), from_state=from_state, to_state=to_state, reason=reason,
                            event=event))
        await session.commit()


async def list_events(session: AsyncSession, node_name: str | None = None, limit: int = 100) -> list[HaEventRecord]:
    """The latest HA events, newest first."""
    query = select(HaEvent, Node.name).join(Node, Node.id == HaEvent.node_id)
    if node_name:
        query = query.where(Node.name == node_name)
    async with translate_errors():
        rows = (await session.execute(query.order_by(HaEvent.id.desc()).limit(limit))).all()
    return [HaEventRecord(name, e.at, e.from_state, e.to_state, e.reason, e.event) for e, name in rows]


async def failed_over_nodes(session: AsyncSession) -> list[str]:
    """Names of the nodes whose stored state means a failover is in effect."""
    query = (
        select(Node.name)
        .join(NodeHaState, Node.id == NodeHaState.node_id)
        .where(NodeHaState.state.in_(FAILED_OVER_STATES))
        .order_by(Node.name)
    )
    async with translate_errors():
        return list((await session.execute(query)).scalars().all())


async def group_epoch(session: AsyncSession, group_name: str) -> int:
    async with translate_errors():
        query = select(RedundancyGroup.epoch).where(RedundancyGroup.name == group_name)
        epoch = (await session.execute(query)).scalar()
    if epoch is None:
        raise NotFound(f"group {group_name!r} does not exist")
    return epoch


async def _fence(session: AsyncSession, group_name: str, expected_epoch: int) -> tuple[int, int]:
    """Compare-and-set the epoch (first statement of the transaction); (group id, new epoch)."""
    result = await session.execute(
        update(RedundancyGroup)
        .where(RedundancyGroup.name == group_name, RedundancyGroup.epoch == expected_epoch)
        .values(epoch=RedundancyGroup.epoch + 1)
    )
    group = (await session.execute(
        select(RedundancyGroup.id, RedundancyGroup.epoch).where(RedundancyGroup.name == group_name)
    )).first()
    if rowcount(result) != 1:
        await session.rollback()
        if group is None:
            raise NotFound(f"group {group_name!r} does not exist")
        raise FencingConflict(group_name, expected_epoch, group.epoch)
    assert group is not None  # the update above matched it, in this transaction
    return group.id, group.epoch


async def _group_node_ids(session: AsyncSession, group_id: int, names: tuple[str, ...]) -> list[int]:
    rows = (await session.execute(select(Node.name, Node.id).where(Node.group_id == group_id))).all()
    ids = dict(rows)
    missing = [name for name in names if name not in ids]
    if missing:
        await session.rollback()
        raise NotFound(f"node {missing[0]!r} is not in this group")
    return [ids[name] for name in names]


async def _stamp_epoch(session: AsyncSession, group_id: int, epoch: int) -> None:
    members = select(Node.id).where(Node.group_id == group_id).scalar_subquery()
    await session.execute(update(NodeHaState).where(NodeHaState.node_id.in_(members)).values(epoch=epoch))


async def move_users(
    session: AsyncSession, group_name: str, src_node: str, dst_node: str, expected_epoch: int
) -> int:
    """Failover: users active on `src_node` become active on `dst_node`, fenced; new epoch.

    Raises `FencingConflict` (nothing written) if the group's epoch is not `expected_epoch`.
    """
    if src_node == dst_node:
        raise InvalidValue("dst_node", "must differ from src_node")
    async with translate_errors():
        group_id, epoch = await _fence(session, group_name, expected_epoch)
        src_id, dst_id = await _group_node_ids(session, group_id, (src_node, dst_node))
        await session.execute(update(User).where(User.active_node_id == src_id).values(active_node_id=dst_id))
        await _stamp_epoch(session, group_id, epoch)
        await session.commit()
    return epoch


async def restore_users(session: AsyncSession, group_name: str, node_name: str, expected_epoch: int) -> int:
    """Fallback: users assigned to `node_name` and active elsewhere in its group go home; new epoch."""
    async with translate_errors():
        group_id, epoch = await _fence(session, group_name, expected_epoch)
        (home_id,) = await _group_node_ids(session, group_id, (node_name,))
        members = select(Node.id).where(Node.group_id == group_id).scalar_subquery()
        await session.execute(
            update(User)
            .where(User.assigned_node_id == home_id, User.active_node_id.in_(members), User.active_node_id != home_id)
            .values(active_node_id=home_id)
        )
        await _stamp_epoch(session, group_id, epoch)
        await session.commit()
    return epoch


async def count_active(session: AsyncSession, node_name: str) -> int:
    """How many users `node_name` currently serves (ActiveJsmSessions' population)."""
    node_id = await _node_id(session, node_name)
    async with translate_errors():
        return (await session.execute(select(func.count()).where(User.active_node_id == node_id))).scalar_one()
