"""PEP's data access (`ctx.store.pep`): nodes, items and entity caps as plain values.

Rules of this module:
- Features speak JIDs and Elements; this facade turns them into `db.pep` rows and
  back. A lost database surfaces as `DatabaseUnavailable`.
- A publish or retract is one ORM transaction (read-modify-write); reads go through
  the hot path (`db.hotpath`).
- Caps features (XEP-0115) are cached here for the node's life: a verified hash names
  one feature set for ever, so the cache never goes stale. Bounded by `CAPS_CACHE`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import pep
from presence_ha.db.engine import translate_errors
from presence_ha.db.hotpath import HotPath
from presence_ha.db.pep import Item, NodeConfig, PreconditionNotMet
from presence_ha.db.roster import user_id_of
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import serialize

__all__ = ["Item", "NodeConfig", "PepStore", "PreconditionNotMet"]

CAPS_CACHE = 10_000  # distinct client builds a node remembers


class PepStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], hot: HotPath, domain: str) -> None:
        self._sessions, self._hot, self.domain = sessions, hot, domain
        self._caps: dict[str, frozenset[str]] = {}

    def _name(self, user: JID) -> str | None:
        return user.local if user.local is not None and user.domain == self.domain else None

    async def publish(self, owner: JID, node: str, options: dict[str, object], item_id: str,
                      payload: ET.Element) -> NodeConfig | None:
        """Store the item (see `db.pep.publish`); None: `owner` is no account."""
        name, text = self._name(owner), serialize(payload, "")
        if name is None:
            return None

        def write(session) -> NodeConfig | None:
            conn = session.connection()
            uid = user_id_of(conn, self.domain, name)
            return None if uid is None else pep.publish(conn, uid, node, options, item_id, text)

        async with translate_errors(), self._sessions() as session, session.begin():
            return await session.run_sync(write)

    async def retract(self, owner: JID, node: str, item_id: str) -> bool | None:
        name = self._name(owner)
        if name is None:
            return None

        def write(session) -> bool | None:
            conn = session.connection()
            uid = user_id_of(conn, self.domain, name)
            return None if uid is None else pep.retract(conn, uid, node, item_id)

        async with translate_errors(), self._sessions() as session, session.begin():
            return await session.run_sync(write)

    async def items(self, owner: JID, node: str, item_ids: list[str],
                    max_items: int | None) -> tuple[NodeConfig, list[Item]] | None:
        name = self._name(owner)
        return None if name is None else await self._hot.run(pep.items_of, self.domain, name, node, item_ids, max_items)

    async def nodes(self, owner: JID) -> list[tuple[str, NodeConfig]]:
        name = self._name(owner)
        found = await self._hot.run(pep.nodes_of, self.domain, name) if name is not None else None
        return found or []

    async def last_items(self, owners: Iterable[JID], nodes: Iterable[str]) -> list[tuple[Item, str]]:
        names = {n for n in (self._name(o) for o in owners) if n is not None}
        return await self._hot.run(pep.last_items, self.domain, names, set(nodes))

    # -- entity caps (XEP-0115) ----------------------------------------------------
    async def caps_features(self, ver: str) -> frozenset[str] | None:
        known = self._caps.get(ver)
        if known is None:
            found = await self._hot.run(pep.caps_features, ver)
            if found is not None:
                known = self._remember(ver, found)
        return known

    def cached_caps(self, ver: str) -> frozenset[str] | None:
        return self._caps.get(ver)

    async def put_caps(self, ver: str, features: list[str]) -> None:
        await self._hot.run(pep.put_caps, ver, features)
        self._remember(ver, features)

    def _remember(self, ver: str, features: Iterable[str]) -> frozenset[str]:
        if len(self._caps) >= CAPS_CACHE:
            self._caps.pop(next(iter(self._caps)))
        known = self._caps[ver] = frozenset(features)
        return known
