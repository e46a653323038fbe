"""The per-user message archive (XEP-0313) and its preferences.

Rules of this module:
- Hot-path functions (`db.hotpath`): each takes a Connection, then the domain and
  usernames; reads are one statement where they can be.
- `append_rows` writes a batch of independent rows in one executemany of an
  INSERT ... SELECT that finds the account by name; a username that is no account
  writes nothing. Rows are independent, so PostgreSQL's autocommit hot path is right.
- Order is the autoincrement id: paging (XEP-0059) runs on ids, the `stanza_id`s
  (XEP-0359) are only looked up to find where a page starts.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import Boolean, DateTime, String, Text, bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection, Row

from presence_ha.db.models import ArchivedMessage, ArchivePrefs, Cluster, User
from presence_ha.db.roster import user_id_of


@dataclass(frozen=True)
class ArchiveRow:
    stanza_id: str
    peer: str
    outgoing: bool
    stamp: dt.datetime
    stanza: str


@dataclass(frozen=True)
class PrefsRow:
    default: str
    always: tuple[str, ...]
    never: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveQuery:
    """What to read: the filters of the form, then the page (ids are stanza ids)."""

    with_jid: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    after: str | None = None
    before: str | None = None
    last_page: bool = False  # <before/> empty: the newest page
    max: int = 50


@dataclass(frozen=True)
class ArchivePage:
    rows: list[ArchiveRow]
    complete: bool  # this page reaches the end of the result set in its direction
    count: int  # every row that matches the filters
    first_index: int = 0  # how many matching rows come before the page's first (XEP-0059 §2.4)


def _append_statement():
    cluster = select(Cluster.id).where(Cluster.domain == bindparam("domain")).scalar_subquery()
    rows = select(
        User.id, bindparam("stanza_id", type_=String), bindparam("peer", type_=String),
        bindparam("outgoing", type_=Boolean), bindparam("stamp", type_=DateTime(timezone=True)),
        bindparam("stanza", type_=Text),
    ).where(User.cluster_id == cluster, User.username == bindparam("name"))
    return insert(ArchivedMessage).from_select(
        ["user_id", "stanza_id", "peer", "outgoing", "stamp", "stanza"], rows)


_APPEND = _append_statement()


def append_rows(conn: Connection, domain: str, rows: list[tuple[str, ArchiveRow]]) -> None:
    """Hot path: archive each `(username, row)`, in one executemany; a username that is
    no account writes nothing. The account is looked up by name in the statement, not
    from a cache of ids: an id cached across a user's removal could name another
    account later (SQLite reuses the highest rowid), and archive someone's message there."""
    if rows:
        conn.execute(_APPEND, [{"domain": domain, "name": name, "stanza_id": r.stanza_id, "peer": r.peer,
                                "outgoing": r.outgoing, "stamp": r.stamp, "stanza": r.stanza} for name, r in rows])


_COLUMNS = (ArchivedMessage.id, ArchivedMessage.stanza_id, ArchivedMessage.peer, ArchivedMessage.outgoing,
            ArchivedMessage.stamp, ArchivedMessage.stanza)


def _row(m: Row) -> ArchiveRow:
    stamp = m.stamp if m.stamp.tzinfo else m.stamp.replace(tzinfo=dt.UTC)
    return ArchiveRow(m.stanza_id, m.peer, m.outgoing, stamp, m.stanza)


class UnknownAnchor(LookupError):
    """An RSM after/before id that names no message of this archive."""


def _anchor(conn: Connection, uid: int, stanza_id: str) -> int:
    found = conn.execute(select(ArchivedMessage.id).where(
        ArchivedMessage.user_id == uid, ArchivedMessage.stanza_id == stanza_id)).scalar_one_or_none()
    if found is None:
        raise UnknownAnchor(stanza_id)
    return found


def _filtered(uid: int, query: ArchiveQuery):
    stmt = select(*_COLUMNS).where(ArchivedMessage.user_id == uid)
    if query.with_jid is not None:
        stmt = stmt.where(ArchivedMessage.peer == query.with_jid)
    if query.start is not None:
        stmt = stmt.where(ArchivedMessage.stamp >= query.start)
    if query.end is not None:
        stmt = stmt.where(ArchivedMessage.stamp <= query.end)
    return stmt


def page_of(conn: Connection, domain: str, username: str, query: ArchiveQuery) -> ArchivePage | None:
    """Hot path: one page of `username`'s archive, oldest first; None: no such account.
    Raises `UnknownAnchor` for an after/before id not in the archive."""
    uid = user_id_of(conn, domain, username)
    if uid is None:
        return None
    base = _filtered(uid, query)
    count = conn.execute(select(func.count()).select_from(base.subquery())).scalar_one()
    backwards = query.before is not None or query.last_page
    stmt = base
    if query.after is not None:
        stmt = stmt.where(ArchivedMessage.id > _anchor(conn, uid, query.after))
    if query.before is not None:
        stmt = stmt.where(ArchivedMessage.id < _anchor(conn, uid, query.before))
    order = ArchivedMessage.id.desc() if backwards else ArchivedMessage.id.asc()
    found = list(conn.execute(stmt.order_by(order).limit(query.max + 1)))
    complete = len(found) <= query.max
    found = found[:query.max]
    if backwards:
        found.reverse()
    index = 0
    if found:
        earlier = base.where(ArchivedMessage.id < found[0].id).subquery()
        index = conn.execute(select(func.count()).select_from(earlier)).scalar_one()
    return ArchivePage([_row(m) for m in found], complete, count, index)


def prefs_of(conn: Connection, domain: str, username: str) -> PrefsRow | None:
    """Hot path: the user's preferences (the default if never set); None: no such account."""
    uid = user_id_of(conn, domain, username)
    if uid is None:
        return None
    row = conn.execute(select(ArchivePrefs.default, ArchivePrefs.always, ArchivePrefs.never)
                       .where(ArchivePrefs.user_id == uid)).first()
    if row is None:
        return PrefsRow("always", (), ())
    return PrefsRow(row.default, tuple(json.loads(row.always)), tuple(json.loads(row.never)))


def set_prefs(conn: Connection, domain: str, username: str, prefs: PrefsRow) -> bool | None:
    """Hot path (one transaction on SQLite; on PostgreSQL a delete then an insert, each
    alone: a reader in between sees the default, never a mix)."""
    uid = user_id_of(conn, domain, username)
    if uid is None:
        return None
    conn.execute(delete(ArchivePrefs).where(ArchivePrefs.user_id == uid))
    conn.execute(insert(ArchivePrefs).values(
        user_id=uid, default=prefs.default, always=json.dumps(list(prefs.always)), never=json.dumps(list(prefs.never))))
    return True
