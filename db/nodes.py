"""The node aggregate: node processes and the addresses they listen on (SPEC §1, §5).

Rules of this module:
- A node name is 1-128 characters of `[A-Za-z0-9_.-]` and unique in the database.
- A node has five ports (client, SRM, admin RPC, node link, metrics). They are
  distinct from each other and from every port of every other node on the same host,
  so several nodes can share one machine (SPEC §5).
- Without explicit ports a node gets a block of five from a base port: the first node
  on a host gets `DEFAULT_BASE_PORT`, later ones the next free block of `PORT_STRIDE`.
- The software version defaults to the installed package's version; a group requires
  both its nodes to run the same one (SPEC §3).
- Write functions commit; read functions do not.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.clusters import get_cluster
from presence_ha.db.engine import translate_errors
from presence_ha.db.errors import AlreadyExists, InvalidValue, NotFound
from presence_ha.db.models import Node, RedundancyGroup

NODE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
PORT_FIELDS = ("client_port", "srm_port", "admin_port", "link_port", "metrics_port")
DEFAULT_BASE_PORT = 15222
PORT_STRIDE = 10
MAX_PORT_BLOCKS = 1000


@dataclass(frozen=True)
class NodePorts:
    client_port: int
    srm_port: int
    admin_port: int
    link_port: int
    metrics_port: int

    @classmethod
    def from_base(cls, base: int) -> NodePorts:
        """The port scheme: client=base, srm=base+1, admin=base+2, link=base+3, metrics=base+4."""
        return cls(base, base + 1, base + 2, base + 3, base + 4)

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, field) for field in PORT_FIELDS)


@dataclass(frozen=True)
class NodeInfo:
    id: int
    name: str
    host: str
    ports: NodePorts
    software_version: str
    cluster_id: int
    group: str | None
    group_position: int | None


def installed_version() -> str:
    try:
        return importlib.metadata.version("presence-ha")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def validate_node_name(name: str) -> str:
    if not NODE_NAME_RE.fullmatch(name):
        raise InvalidValue("node name", "1-128 characters of A-Z a-z 0-9 _ . -")
    return name


def validate_ports(ports: NodePorts, taken: set[int]) -> None:
    """Each port in 1..65535, the five distinct, none already used on the host."""
    for field in PORT_FIELDS:
        port = getattr(ports, field)
        if not 1 <= port <= 65535:
            raise InvalidValue(field, f"{port} is not a TCP port (1-65535)")
    if len(set(ports.values())) != len(PORT_FIELDS):
        raise InvalidValue("ports", f"a node's five ports must be distinct, got {ports.values()}")
    clash = sorted(set(ports.values()) & taken)
    if clash:
        raise InvalidValue("ports", f"port {clash[0]} is already used by another node on this host")


def pick_ports(taken: set[int], base: int | None) -> NodePorts:
    """The block from `base`, or the first free block from `DEFAULT_BASE_PORT`."""
    if base is not None:
        return NodePorts.from_base(base)
    for block in range(MAX_PORT_BLOCKS):
        ports = NodePorts.from_base(DEFAULT_BASE_PORT + block * PORT_STRIDE)
        if not set(ports.values()) & taken:
            return ports
    raise InvalidValue("ports", "no free port block; give --base-port")


def _info(row: Node, group: str | None) -> NodeInfo:
    ports = NodePorts(*(getattr(row, field) for field in PORT_FIELDS))
    return NodeInfo(
        row.id, row.name, row.host, ports, row.software_version, row.cluster_id, group, row.group_position
    )


async def ports_on_host(session: AsyncSession, host: str) -> set[int]:
    async with translate_errors():
        rows = (await session.execute(select(Node).where(Node.host == host))).scalars().all()
    return {port for row in rows for port in (getattr(row, field) for field in PORT_FIELDS)}


async def add_node(
    session: AsyncSession,
    name: str,
    *,
    host: str = "127.0.0.1",
    base_port: int | None = None,
    ports: dict[str, int] | None = None,
    software_version: str | None = None,
) -> NodeInfo:
    """Register a node of the cluster; `ports` overrides single ports of the base scheme."""
    validate_node_name(name)
    cluster = await get_cluster(session)
    if (await find_node(session, name)) is not None:
        raise AlreadyExists(f"node {name!r} already exists")
    taken = await ports_on_host(session, host)
    chosen = replace(pick_ports(taken, base_port), **(ports or {}))
    validate_ports(chosen, taken)
    version = software_version or installed_version()
    row = Node(cluster_id=cluster.id, name=name, host=host, software_version=version, **{
        field: getattr(chosen, field) for field in PORT_FIELDS
    })
    async with translate_errors():
        session.add(row)
        await session.commit()
        await session.refresh(row)
    return _info(row, None)


async def list_nodes(session: AsyncSession) -> list[NodeInfo]:
    """Every node, by group then position then name."""
    query = (
        select(Node, RedundancyGroup.name)
        .outerjoin(RedundancyGroup, Node.group_id == RedundancyGroup.id)
        .order_by(RedundancyGroup.id.is_(None), RedundancyGroup.id, Node.group_position, Node.name)
    )
    async with translate_errors():
        rows = (await session.execute(query)).all()
    return [_info(node, group) for node, group in rows]


async def find_node(session: AsyncSession, name: str) -> NodeInfo | None:
    query = (
        select(Node, RedundancyGroup.name)
        .outerjoin(RedundancyGroup, Node.group_id == RedundancyGroup.id)
        .where(Node.name == name)
    )
    async with translate_errors():
        row = (await session.execute(query)).first()
    return _info(row[0], row[1]) if row else None


async def get_node(session: AsyncSession, name: str) -> NodeInfo:
    info = await find_node(session, name)
    if info is None:
        raise NotFound(f"node {name!r} does not exist")
    return info
