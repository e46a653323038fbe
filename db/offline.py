"""Offline message storage (RFC 6121 §8.5.2.2).

Rules of this module:
- Functions take an `AsyncSession` and return plain values; the caller owns the
  transaction.
- Messages keep their arrival order (the autoincrement id); `pop_all` returns and
  deletes them in one transaction, so a message is handed out once.
- The per-user cap is enforced by the caller (`count` then `add` in one transaction).
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import OfflineMessage


async def count(session: AsyncSession, uid: int) -> int:
    stmt = select(func.count()).select_from(OfflineMessage).where(OfflineMessage.user_id == uid)
    return int((await session.execute(stmt)).scalar_one())


async def add(session: AsyncSession, uid: int, stanza: str) -> None:
    session.add(OfflineMessage(user_id=uid, stanza=stanza))
    await session.flush()


async def pop_all(session: AsyncSession, uid: int) -> list[str]:
    """The stored stanzas of `uid`, oldest first; they are deleted."""
    rows = (
        await session.execute(
            select(OfflineMessage.id, OfflineMessage.stanza)
            .where(OfflineMessage.user_id == uid)
            .order_by(OfflineMessage.id)
            .with_for_update()
        )
    ).all()
    if rows:
        await session.execute(delete(OfflineMessage).where(OfflineMessage.id.in_([r.id for r in rows])))
    return [r.stanza for r in rows]
