"""Block lists (XEP-0191): each user's blocked JIDs, read with the roster in one statement.

Rules of this module:
- Items are JIDs in their prepared text form: a full JID, a bare JID, a domain or
  a domain with a resource (XEP-0191 §3.2; matching is `server.blocking`'s rule).
- The presence hot path already reads every user's subscriptions once per roster
  cache entry; the block list comes with them in the same statement
  (`roster_and_blocks_of`), so blocking adds no query to a login and none to a
  message (the cache is `server.roster_cache`'s).
- Writes take an `AsyncSession` and leave the transaction to the caller.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, delete, literal, literal_column, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.models import BlockedJid, RosterItem
from presence_ha.db.roster import user_id_of

BLOCKED = ""  # the `subscription` column of a block-list row in `roster_and_blocks_of` (never a roster value)

_ROSTER_AND_BLOCKS = union_all(
    select(BlockedJid.jid.label("jid"), literal(BLOCKED).label("sub"), literal(0).label("ord"))
    .where(BlockedJid.user_id == bindparam("uid")),
    select(RosterItem.contact_jid, RosterItem.subscription, RosterItem.id)
    .where(RosterItem.user_id == bindparam("uid")),
).order_by(literal_column("ord"))
_LIST = select(BlockedJid.jid).where(BlockedJid.user_id == bindparam("uid")).order_by(BlockedJid.id)


RosterAndBlocks = tuple[list[tuple[str, str]], list[str]]


def roster_and_blocks_of(conn: Connection, domain: str, username: str) -> RosterAndBlocks | None:
    """((contact, subscription) in roster order, blocked JIDs) of the account; None: no such account."""
    uid = user_id_of(conn, domain, username)
    if uid is None:
        return None
    roster: list[tuple[str, str]] = []
    blocked: list[str] = []
    for jid, sub, _ord in conn.execute(_ROSTER_AND_BLOCKS, {"uid": uid}):
        if sub == BLOCKED:
            blocked.append(jid)
        else:
            roster.append((jid, sub))
    return roster, blocked


async def list_blocked(session: AsyncSession, uid: int) -> list[str]:
    return list(await session.scalars(_LIST, {"uid": uid}))


async def block(session: AsyncSession, uid: int, jids: Collection[str]) -> list[str]:
    """Add `jids` to the block list; returns those that were not on it already."""
    have = set(await list_blocked(session, uid))
    added = [jid for jid in dict.fromkeys(jids) if jid not in have]
    session.add_all(BlockedJid(user_id=uid, jid=jid) for jid in added)
    await session.flush()
    return added


async def unblock(session: AsyncSession, uid: int, jids: Collection[str] | None) -> list[str]:
    """Remove `jids` (None: every item) from the block list; returns those removed."""
    have = await list_blocked(session, uid)
    gone = have if jids is None else [jid for jid in have if jid in set(jids)]
    if gone:
        await session.execute(delete(BlockedJid).where(BlockedJid.user_id == uid, BlockedJid.jid.in_(gone)))
    return gone
