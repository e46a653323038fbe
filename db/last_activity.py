"""Last logout of each user (XEP-0012): when its last available resource went away.

Rules: one row per user, replaced at each logout by one upsert (no read first), run
on the hot path (`db.hotpath`: a logout storm at a node's shutdown is one hop per
user); the time is stored timezone-aware (UTC).
"""

from __future__ import annotations

import datetime as dt
from types import ModuleType
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.models import LastActivity
from presence_ha.db.roster import user_id_of


def _upsert(dialect: ModuleType) -> Any:  # the postgresql or sqlite dialect module
    stmt = dialect.insert(LastActivity).values(
        user_id=bindparam("uid"), logout_at=bindparam("at"), status=bindparam("status"))
    return stmt.on_conflict_do_update(index_elements=[LastActivity.user_id],
                                      set_={"logout_at": stmt.excluded.logout_at, "status": stmt.excluded.status})


_UPSERT = {"postgresql": _upsert(postgresql), "sqlite": _upsert(sqlite)}


def record_by_name(conn: Connection, domain: str, username: str, at: dt.datetime, status: str) -> bool | None:
    """Replace the account's last logout; None: no such account."""
    uid = user_id_of(conn, domain, username)
    if uid is None:
        return None
    conn.execute(_UPSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"],
                 {"uid": uid, "at": at, "status": status})
    return True


async def get(session: AsyncSession, uid: int) -> tuple[dt.datetime, str] | None:
    row = (await session.execute(
        select(LastActivity.logout_at, LastActivity.status).where(LastActivity.user_id == uid))).first()
    if row is None:
        return None
    at = row[0] if row[0].tzinfo is not None else row[0].replace(tzinfo=dt.UTC)  # SQLite drops the zone
    return at, row[1]
