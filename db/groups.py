"""The presence redundancy group aggregate and its configuration rules (SPEC §1, §3).

Rules of this module (each violation is a one-line `ProvisioningError`):
- Name: unique, 1-128 characters of `[A-Za-z0-9_-]`.
- Description: at most 128 characters, none of `"` `%` `&` `\\` `<` `>`.
- Members: one node or two *different* nodes, of the same cluster, running the same
  software version, neither already in a group. "Same database" holds by
  construction: a node exists only as a row of this database.
- The first node given is position 1 (the Active-Standby primary), the second 2.
- Enabling HA needs a pair and healthy database replication (`db.replication`).
  Whether the critical services run is checked at runtime by the SRM, which puts
  the group in the failed states of SPEC §3 / §6; here we only store the flag.
- Adding a group does not move users by itself: callers run
  `db.assignments.rebalance` afterwards (the CLI does).
- Write functions commit; read functions do not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.clusters import get_cluster
from presence_ha.db.engine import translate_errors
from presence_ha.db.errors import AlreadyExists, InvalidValue, NotFound, ProvisioningError
from presence_ha.db.models import Node, RedundancyGroup
from presence_ha.db.nodes import NodeInfo, get_node
from presence_ha.db.replication import replication_status

GROUP_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
DESCRIPTION_MAX = 128
DESCRIPTION_FORBIDDEN = '"%&\\<>'


@dataclass(frozen=True)
class GroupInfo:
    name: str
    description: str
    ha_enabled: bool
    epoch: int
    nodes: tuple[str, ...]


def validate_group_name(name: str) -> str:
    if not GROUP_NAME_RE.fullmatch(name):
        raise InvalidValue("group name", f"{name!r} must be 1-128 characters of A-Z a-z 0-9 _ -")
    return name


def validate_description(text: str) -> str:
    if len(text) > DESCRIPTION_MAX:
        raise InvalidValue("description", f"longer than {DESCRIPTION_MAX} characters ({len(text)})")
    bad = sorted(set(DESCRIPTION_FORBIDDEN) & set(text))
    if bad:
        raise InvalidValue("description", f"must not contain {bad[0]!r} (forbidden: \" % & \\ < >)")
    return text


def check_members(nodes: Sequence[NodeInfo], cluster_id: int) -> None:
    """SPEC §3 membership rules for the nodes of a new group."""
    if not 1 <= len(nodes) <= 2:
        raise ProvisioningError(f"a group has one node or a pair, not {len(nodes)}")
    if len(nodes) == 2 and nodes[0].name == nodes[1].name:
        raise ProvisioningError(f"a pair needs two different nodes, got {nodes[0].name!r} twice")
    for node in nodes:
        if node.cluster_id != cluster_id:
            raise ProvisioningError(f"node {node.name!r} belongs to another cluster")
        if node.group is not None:
            raise ProvisioningError(f"node {node.name!r} is already in group {node.group!r}")
    if len({node.software_version for node in nodes}) > 1:
        versions = ", ".join(f"{n.name}={n.software_version}" for n in nodes)
        raise ProvisioningError(f"both nodes must run the same software version ({versions})")


async def add_group(
    session: AsyncSession, name: str, node_names: Sequence[str], *, description: str = ""
) -> GroupInfo:
    """Create a group of one node or a pair, HA off; commit."""
    validate_group_name(name)
    validate_description(description)
    cluster = await get_cluster(session)
    if await find_group(session, name) is not None:
        raise AlreadyExists(f"group {name!r} already exists")
    nodes = [await get_node(session, node_name) for node_name in node_names]
    check_members(nodes, cluster.id)
    async with translate_errors():
        group = RedundancyGroup(cluster_id=cluster.id, name=name, description=description, ha_enabled=False, epoch=0)
        session.add(group)
        await session.flush()
        for position, node in enumerate(nodes, start=1):
            await session.execute(
                update(Node).where(Node.id == node.id).values(group_id=group.id, group_position=position)
            )
        await session.commit()
    return await get_group(session, name)


async def edit_group(
    session: AsyncSession, name: str, *, description: str | None = None, ha_enabled: bool | None = None
) -> GroupInfo:
    """Change a group's description and/or HA switch; commit."""
    group = await get_group(session, name)
    values: dict[str, object] = {}
    if description is not None:
        values["description"] = validate_description(description)
    if ha_enabled is not None:
        if ha_enabled and not group.ha_enabled:
            await _check_ha_allowed(session, group)
        values["ha_enabled"] = ha_enabled
    if values:
        async with translate_errors():
            await session.execute(update(RedundancyGroup).where(RedundancyGroup.name == name).values(**values))
            await session.commit()
    return await get_group(session, name)


async def _check_ha_allowed(session: AsyncSession, group: GroupInfo) -> None:
    if len(group.nodes) != 2:
        raise ProvisioningError(f"group {group.name!r} has one node: high availability needs a pair")
    report = await replication_status(session)
    if report.fault is not None:  # broken replication; none at all (one database) is no fault
        raise ProvisioningError(
            f"cannot enable HA on {group.name!r}: database replication is not healthy ({report.fault})"
        )


async def list_groups(session: AsyncSession) -> list[GroupInfo]:
    query = (
        select(RedundancyGroup, Node.name)
        .outerjoin(Node, Node.group_id == RedundancyGroup.id)
        .order_by(RedundancyGroup.id, Node.group_position)
    )
    async with translate_errors():
        rows = (await session.execute(query)).all()
    groups: dict[int, tuple[RedundancyGroup, list[str]]] = {}
    for group, node_name in rows:
        entry = groups.setdefault(group.id, (group, []))
        if node_name is not None:
            entry[1].append(node_name)
    return [GroupInfo(g.name, g.description, g.ha_enabled, g.epoch, tuple(n)) for g, n in groups.values()]


async def epoch_sum(session: AsyncSession) -> int:
    """The sum of every group's epoch: it changes whenever users move (a cheap poll)."""
    async with translate_errors():
        return int((await session.execute(select(func.coalesce(func.sum(RedundancyGroup.epoch), 0)))).scalar_one())


async def find_group(session: AsyncSession, name: str) -> GroupInfo | None:
    return next((g for g in await list_groups(session) if g.name == name), None)


async def get_group(session: AsyncSession, name: str) -> GroupInfo:
    group = await find_group(session, name)
    if group is None:
        raise NotFound(f"group {name!r} does not exist")
    return group


async def group_of_node(session: AsyncSession, node_name: str) -> GroupInfo | None:
    """The group `node_name` belongs to, or None."""
    return next((g for g in await list_groups(session) if node_name in g.nodes), None)


async def peer_of(session: AsyncSession, node_name: str) -> str | None:
    """The other node of `node_name`'s pair, or None (no group, or a single-node group)."""
    group = await group_of_node(session, node_name)
    if group is None:
        return None
    others = [n for n in group.nodes if n != node_name]
    return others[0] if others else None
