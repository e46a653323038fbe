"""vCards (XEP-0054), one per user.

Rules: the vCard is stored as the serialized `<vCard xmlns='vcard-temp'/>` element the
user set, replaced whole on each set (XEP-0054 §3.2).
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.models import VCard


async def get(session: AsyncSession, uid: int) -> str | None:
    return (await session.execute(select(VCard.vcard).where(VCard.user_id == uid))).scalar_one_or_none()


async def put(session: AsyncSession, uid: int, vcard: str) -> None:
    row = await session.get(VCard, uid, with_for_update=True)
    if row is None:
        session.add(VCard(user_id=uid, vcard=vcard))
    else:
        row.vcard, row.updated_at = vcard, func.now()
    await session.flush()


async def remove(session: AsyncSession, uid: int) -> None:
    await session.execute(delete(VCard).where(VCard.user_id == uid))
