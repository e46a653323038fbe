"""The Sync Agent's database side: read topology and assignments, apply plans (SPEC §2).

Rules of this module:
- All decisions come from the pure `server.assignment`; this module only reads and
  writes rows.
- Users are moved only while no node is failed over (SPEC §2): a move changes both
  the assigned and the active node, which would fight the SRM's fenced moves.
- A moved user's clients reconnect to the new node; the node processes enforce that.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import rowcount, translate_errors
from presence_ha.db.errors import FailoverInProgress, NotFound
from presence_ha.db.models import Node, RedundancyGroup, User
from presence_ha.db.parameters import assignment_mode
from presence_ha.db.srm_state import failed_over_nodes
from presence_ha.server.assignment import AssignmentMode, moves, plan

UPDATE_CHUNK = 500  # ids per UPDATE ... WHERE id IN (...), below SQLite's variable limit


async def topology(session: AsyncSession) -> tuple[list[tuple[str, ...]], dict[str, int]]:
    """(groups as ordered tuples of node names, node name -> node id) of grouped nodes."""
    query = (
        select(RedundancyGroup.id, Node.name, Node.id)
        .join(Node, Node.group_id == RedundancyGroup.id)
        .order_by(RedundancyGroup.id, Node.group_position, Node.id)
    )
    async with translate_errors():
        rows = (await session.execute(query)).all()
    groups: dict[int, list[str]] = {}
    for group_id, name, _ in rows:
        groups.setdefault(group_id, []).append(name)
    return [tuple(names) for names in groups.values()], {name: node_id for _, name, node_id in rows}


async def node_loads(session: AsyncSession) -> Counter[str]:
    """Assigned users per node name."""
    query = select(Node.name, User.id).join(User, User.assigned_node_id == Node.id)
    async with translate_errors():
        return Counter(name for name, _ in (await session.execute(query)).all())


async def refuse_during_failover(session: AsyncSession, action: str) -> None:
    failed = await failed_over_nodes(session)
    if failed:
        raise FailoverInProgress(
            f"{action} refused: node {', '.join(failed)} is failed over; fall back first (SPEC §2)"
        )


async def current_assignment(session: AsyncSession) -> dict[str, str | None]:
    query = select(User.username, Node.name).outerjoin(Node, Node.id == User.assigned_node_id)
    async with translate_errors():
        return dict((await session.execute(query)).all())


async def _apply(session: AsyncSession, changes: dict[str, str | None], ids: dict[str, int]) -> None:
    by_node: dict[str | None, list[str]] = {}
    for user, node in changes.items():
        by_node.setdefault(node, []).append(user)
    for node, users in by_node.items():
        node_id = ids[node] if node is not None else None
        for i in range(0, len(users), UPDATE_CHUNK):
            await session.execute(
                update(User)
                .where(User.username.in_(users[i : i + UPDATE_CHUNK]))
                .values(assigned_node_id=node_id, active_node_id=node_id)
            )


async def rebalance(session: AsyncSession) -> int:
    """Re-plan every user's node for the current mode and topology; commit; users moved."""
    await refuse_during_failover(session, "rebalancing users")
    mode = await assignment_mode(session)
    groups, ids = await topology(session)
    current = await current_assignment(session)
    changes = moves(current, plan(mode, groups, current))
    async with translate_errors():
        await _apply(session, changes, ids)
        await session.commit()
    return len(changes)


async def assign_user(session: AsyncSession, username: str, node_name: str | None) -> None:
    """Assign one user by hand (the admin's job in mode None); commit."""
    await refuse_during_failover(session, "assigning users")
    _, ids = await topology(session)
    if node_name is not None and node_name not in ids:
        raise NotFound(f"node {node_name!r} does not exist or is in no group")
    async with translate_errors():
        result = await session.execute(
            update(User)
            .where(User.username == username)
            .values(assigned_node_id=ids.get(node_name or ""), active_node_id=ids.get(node_name or ""))
        )
        await session.commit()
    if rowcount(result) == 0:
        raise NotFound(f"user {username!r} does not exist")


async def mode_and_topology(session: AsyncSession) -> tuple[AssignmentMode, list[tuple[str, ...]], dict[str, int]]:
    mode = await assignment_mode(session)
    groups, ids = await topology(session)
    return mode, groups, ids
