"""PEP nodes and items (XEP-0163) and the global entity-caps cache (XEP-0115).

Rules of this module:
- Functions take a Connection, then the domain and usernames, and return plain values.
  A publish is read-modify-write (node config, replace the item, trim to max_items):
  it runs in one ORM transaction (`server.pep_store`), never on PostgreSQL's
  autocommit hot path. Reads run on the hot path.
- The newest item of a node has the highest id; re-publishing an item id moves it
  to the newest place (XEP-0060 §7.1.2: it replaces the old item).
- Caps rows are written once per hash and never changed (a verified hash names one
  feature set); a second writer of the same hash is ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from presence_ha.db.models import Cluster, EntityCaps, PepItem, PepNode, User
from presence_ha.db.roster import user_id_of


@dataclass(frozen=True)
class NodeConfig:
    access_model: str = "presence"
    max_items: int = 1
    send_last: bool = True


@dataclass(frozen=True)
class Item:
    owner: str  # username
    node: str
    item_id: str
    payload: str


_NODE_COLUMNS = (PepNode.id, PepNode.access_model, PepNode.max_items, PepNode.send_last)


def _node_row(conn: Connection, uid: int, node: str) -> Row | None:
    return conn.execute(select(*_NODE_COLUMNS).where(PepNode.user_id == uid, PepNode.node == node)).first()


def config_of(conn: Connection, domain: str, username: str, node: str) -> NodeConfig | None:
    """The node's configuration; None: no such account or node."""
    uid = user_id_of(conn, domain, username)
    row = _node_row(conn, uid, node) if uid is not None else None
    return None if row is None else NodeConfig(row.access_model, row.max_items, row.send_last)


class PreconditionNotMet(Exception):
    """The node exists with a configuration other than the publish-options ask (XEP-0060 §7.1.5)."""


def publish(conn: Connection, uid: int, node: str, options: dict[str, object], item_id: str,
            payload: str) -> NodeConfig:
    """Store the item, creating the node configured by `options` (NodeConfig field ->
    value; the rest default) if it is new; returns the node's configuration. Raises
    `PreconditionNotMet` if the node exists and a given option differs (XEP-0223)."""
    row = _node_row(conn, uid, node)
    if row is None:
        config = dataclasses.replace(NodeConfig(), **options)  # type: ignore[arg-type]
        node_id = conn.execute(insert(PepNode).values(
            user_id=uid, node=node, access_model=config.access_model, max_items=config.max_items,
            send_last=config.send_last).returning(PepNode.id)).scalar_one()
    else:
        node_id = row.id
        config = NodeConfig(row.access_model, row.max_items, row.send_last)
        if any(getattr(config, key) != value for key, value in options.items()):
            raise PreconditionNotMet(node)
    conn.execute(delete(PepItem).where(PepItem.node_id == node_id, PepItem.item_id == item_id))
    conn.execute(insert(PepItem).values(node_id=node_id, item_id=item_id, payload=payload))
    keep = select(PepItem.id).where(PepItem.node_id == node_id).order_by(PepItem.id.desc()).limit(config.max_items)
    conn.execute(delete(PepItem).where(PepItem.node_id == node_id, PepItem.id.not_in(keep)))
    return config


def retract(conn: Connection, uid: int, node: str, item_id: str) -> bool | None:
    """Delete the item: True if it was there, False if not, None if no such node."""
    row = _node_row(conn, uid, node)
    if row is None:
        return None
    return bool(conn.execute(delete(PepItem).where(PepItem.node_id == row.id, PepItem.item_id == item_id)).rowcount)


def items_of(conn: Connection, domain: str, username: str, node: str, item_ids: list[str],
             max_items: int | None) -> tuple[NodeConfig, list[Item]] | None:
    """The node's configuration and items, newest first (only `item_ids` if given, at most
    `max_items` if given); None: no such account or node."""
    uid = user_id_of(conn, domain, username)
    row = _node_row(conn, uid, node) if uid is not None else None
    if row is None:
        return None
    stmt = select(PepItem.item_id, PepItem.payload).where(PepItem.node_id == row.id).order_by(PepItem.id.desc())
    if item_ids:
        stmt = stmt.where(PepItem.item_id.in_(item_ids))
    if max_items is not None:
        stmt = stmt.limit(max_items)
    items = [Item(username, node, i, p) for i, p in conn.execute(stmt)]
    return NodeConfig(row.access_model, row.max_items, row.send_last), items


def nodes_of(conn: Connection, domain: str, username: str) -> list[tuple[str, NodeConfig]] | None:
    uid = user_id_of(conn, domain, username)
    if uid is None:
        return None
    rows = conn.execute(select(PepNode.node, *_NODE_COLUMNS[1:]).where(PepNode.user_id == uid).order_by(PepNode.node))
    return [(r.node, NodeConfig(r.access_model, r.max_items, r.send_last)) for r in rows]


def last_items(conn: Connection, domain: str, owners: Iterable[str], nodes: Iterable[str]) -> list[tuple[Item, str]]:
    """The newest item of each of `nodes` of each of `owners` whose node sends its last
    item, with the node's access model: what a new resource with +notify gets."""
    owners, nodes = list(owners), list(nodes)
    if not owners or not nodes:
        return []
    cluster = select(Cluster.id).where(Cluster.domain == domain).scalar_subquery()
    rows = conn.execute(
        select(User.username, PepNode.id, PepNode.node, PepNode.access_model)
        .join(PepNode, PepNode.user_id == User.id)
        .where(User.cluster_id == cluster, User.username.in_(owners), PepNode.node.in_(nodes), PepNode.send_last)
    ).all()
    found: list[tuple[Item, str]] = []
    for username, node_id, node, access in rows:
        item = conn.execute(select(PepItem.item_id, PepItem.payload).where(PepItem.node_id == node_id)
                            .order_by(PepItem.id.desc()).limit(1)).first()
        if item is not None:
            found.append((Item(username, node, item[0], item[1]), access))
    return found


def caps_features(conn: Connection, ver: str) -> list[str] | None:
    text = conn.execute(select(EntityCaps.features).where(EntityCaps.ver == ver)).scalar_one_or_none()
    return None if text is None else text.split("\n")


def put_caps(conn: Connection, ver: str, features: list[str]) -> None:
    if caps_features(conn, ver) is not None:
        return
    # another node may learn the same hash first: same features by definition
    with contextlib.suppress(IntegrityError):
        conn.execute(insert(EntityCaps).values(ver=ver, features="\n".join(features)))
