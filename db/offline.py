"""Offline message storage (RFC 6121 §8.5.2.2).

Rules of this module:
- Hot-path functions (`db.hotpath`): each takes a Connection and a username and is
  one statement where it writes, so SQLite's single write lock is held for
  microseconds (a takeover stores and takes messages in bursts).
- Messages keep their arrival order (the autoincrement id); `take_by_name` returns and
  deletes them in one statement, so a message is handed out once, whichever node asks.
- The per-user caps (messages and bytes, `quotas.offline_*`) are part of the storing
  statement (`store_by_name`); each row keeps its size in `bytes` for them.
"""

from __future__ import annotations

from sqlalchemy import Integer, Text, bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection

from presence_ha.db.models import Cluster, OfflineMessage, User
from presence_ha.db.roster import user_id_of

_COUNT = select(func.count()).select_from(OfflineMessage).where(OfflineMessage.user_id == bindparam("uid"))


def _store_statement():
    """One message stored for the user named :name of :domain's cluster, unless that
    would take it over :limit messages or :max_bytes stored bytes: a single statement,
    so SQLite's write lock is held for microseconds, not across round trips (offline
    storage bursts during a takeover). The count and the sum read the (user_id, bytes)
    index only, never the stored stanzas."""
    cluster = select(Cluster.id).where(Cluster.domain == bindparam("domain")).scalar_subquery()
    mine = OfflineMessage.user_id == User.id
    stored = select(func.count()).select_from(OfflineMessage).where(mine).scalar_subquery()
    stored_bytes = select(func.coalesce(func.sum(OfflineMessage.bytes), 0)).where(mine).scalar_subquery()
    size = bindparam("size", type_=Integer)
    rows = select(User.id, bindparam("stanza", type_=Text), size).where(
        User.cluster_id == cluster, User.username == bindparam("name"),
        stored < bindparam("limit", type_=Integer),
        stored_bytes + size <= bindparam("max_bytes", type_=Integer))
    return insert(OfflineMessage).from_select(["user_id", "stanza", "bytes"], rows)


_STORE = _store_statement()


def store_by_name(conn: Connection, domain: str, username: str, stanza: str, limit: int,
                  max_bytes: int) -> bool | None:
    """Hot path (`db.hotpath`): keep `stanza` for `username`; False if it has `limit`
    stored already or `stanza` would take its stored bytes over `max_bytes`, None if
    there is no such account."""
    params = {"domain": domain, "name": username, "stanza": stanza, "size": len(stanza.encode()),
              "limit": limit, "max_bytes": max_bytes}
    if conn.execute(_STORE, params).rowcount:
        return True
    return False if user_id_of(conn, domain, username) is not None else None


def take_by_name(conn: Connection, domain: str, username: str) -> list[str] | None:
    """Hot path (`db.hotpath`): the stored stanzas of `username`, oldest first, deleted
    in one statement (so two nodes never both take one); None if no such account."""
    uid = user_id_of(conn, domain, username)
    if uid is None:
        return None
    if not conn.execute(_COUNT, {"uid": uid}).scalar_one():
        return []  # the usual case at login: a read, no write lock
    taken = (delete(OfflineMessage).where(OfflineMessage.user_id == uid)
             .returning(OfflineMessage.id, OfflineMessage.stanza))
    return [stanza for _id, stanza in sorted(conn.execute(taken).all())]
