"""Rosters, subscription state and pending inbound requests (RFC 6121 §2, §3).

Rules of this module:
- Every function takes an `AsyncSession` and returns plain values (`RosterRow`,
  strings, ints), never ORM objects. The caller owns the transaction.
- A user is found by localpart within the cluster serving `domain` (`user_id`).
- Contacts are bare JIDs in their prepared text form.
- A roster row exists when the user put the contact on the roster, or when the
  subscription state needs one (subscription other than none, a pending outbound
  request, a pre-approval). An inbound request alone adds no roster item
  (RFC 6121 §3.1.3); it lives in `pending_subscriptions` with the stanza to redeliver.
- `lock=True` takes a row lock (`SELECT ... FOR UPDATE`; a no-op on SQLite, whose
  writers are serialized anyway) so that two nodes updating the same subscription
  serialize instead of losing an update.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import rowcount
from presence_ha.db.models import Cluster, PendingSubscription, RosterItem, User


@dataclass(frozen=True)
class RosterRow:
    contact: str
    name: str | None = None
    subscription: str = "none"  # none | to | from | both
    ask: bool = False  # pending outbound request (ask='subscribe')
    approved: bool = False  # pre-approved inbound request (RFC 6121 §3.4)
    groups: tuple[str, ...] = ()


def _row(item: RosterItem) -> RosterRow:
    return RosterRow(
        contact=item.contact_jid,
        name=item.name,
        subscription=item.subscription,
        ask=item.ask_subscribe,
        approved=item.approved,
        groups=tuple(json.loads(item.groups or "[]")),
    )


# Hot-path statements built once (a reused statement memoizes its cache key): every
# roster load and presence write looks user ids up.
_USER_ID = (
    select(User.id)
    .join(Cluster, Cluster.id == User.cluster_id)
    .where(Cluster.domain == bindparam("domain"), User.username == bindparam("username"))
)
_USER_IDS = (
    select(User.username, User.id)
    .join(Cluster, Cluster.id == User.cluster_id)
    .where(Cluster.domain == bindparam("domain"), User.username.in_(bindparam("usernames", expanding=True)))
)


async def user_id(session: AsyncSession, domain: str, username: str) -> int | None:
    return (await session.execute(_USER_ID, {"domain": domain, "username": username})).scalar_one_or_none()


async def user_ids(session: AsyncSession, domain: str, usernames: Collection[str]) -> dict[str, int]:
    """`user_id` for many localparts in one query; unknown ones are missing."""
    rows = await session.execute(_USER_IDS, {"domain": domain, "usernames": list(usernames)})
    return dict(rows.all())


_SUBSCRIPTIONS = (select(RosterItem.contact_jid, RosterItem.subscription)
                  .where(RosterItem.user_id == bindparam("uid")).order_by(RosterItem.id))
_ITEMS = (select(RosterItem.contact_jid, RosterItem.name, RosterItem.subscription, RosterItem.ask_subscribe,
                 RosterItem.approved, RosterItem.groups)
          .where(RosterItem.user_id == bindparam("uid")).order_by(RosterItem.id))
_PENDING = (select(PendingSubscription.stanza)
            .where(PendingSubscription.user_id == bindparam("uid")).order_by(PendingSubscription.id))


async def subscriptions(session: AsyncSession, uid: int) -> list[tuple[str, str]]:
    """(contact, subscription) of every roster item, in roster order."""
    return [(c, sub) for c, sub in (await session.execute(_SUBSCRIPTIONS, {"uid": uid})).all()]


async def list_items(session: AsyncSession, uid: int) -> list[RosterRow]:
    rows = await session.scalars(select(RosterItem).where(RosterItem.user_id == uid).order_by(RosterItem.id))
    return [_row(item) for item in rows]


# -- hot-path reads (db.hotpath): by username, None for no such account ----------------

def user_id_of(conn: Connection, domain: str, username: str) -> int | None:
    return conn.execute(_USER_ID, {"domain": domain, "username": username}).scalar_one_or_none()


def _by_name(conn: Connection, domain: str, username: str,
             stmt: Select[*tuple[Any, ...]]) -> Sequence[Row[*tuple[Any, ...]]] | None:
    uid = user_id_of(conn, domain, username)
    return None if uid is None else conn.execute(stmt, {"uid": uid}).all()


def subscriptions_of(conn: Connection, domain: str, username: str) -> list[tuple[str, str]] | None:
    rows = _by_name(conn, domain, username, _SUBSCRIPTIONS)
    return None if rows is None else [(c, sub) for c, sub in rows]


def items_of(conn: Connection, domain: str, username: str) -> list[RosterRow] | None:
    rows = _by_name(conn, domain, username, _ITEMS)
    if rows is None:
        return None
    return [RosterRow(c, name, sub, bool(ask), bool(approved), tuple(json.loads(groups or "[]")))
            for c, name, sub, ask, approved, groups in rows]


def pending_of(conn: Connection, domain: str, username: str) -> list[str] | None:
    rows = _by_name(conn, domain, username, _PENDING)
    return None if rows is None else [stanza for (stanza,) in rows]


async def _item(session: AsyncSession, uid: int, contact: str, lock: bool) -> RosterItem | None:
    stmt = select(RosterItem).where(RosterItem.user_id == uid, RosterItem.contact_jid == contact)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.scalars(stmt)).one_or_none()


async def get_item(session: AsyncSession, uid: int, contact: str, *, lock: bool = False) -> RosterRow | None:
    item = await _item(session, uid, contact, lock)
    return _row(item) if item is not None else None


async def put_item(session: AsyncSession, uid: int, row: RosterRow) -> None:
    """Insert or replace the roster row of `row.contact`."""
    item = await _item(session, uid, row.contact, lock=False)
    if item is None:
        item = RosterItem(user_id=uid, contact_jid=row.contact)
        session.add(item)
    item.name = row.name
    item.subscription = row.subscription
    item.ask_subscribe = row.ask
    item.approved = row.approved
    item.groups = json.dumps(list(row.groups))
    await session.flush()


_ITEM_COUNT = select(func.count()).select_from(RosterItem).where(RosterItem.user_id == bindparam("uid"))
_PENDING_COUNT = (select(func.count()).select_from(PendingSubscription)
                  .where(PendingSubscription.user_id == bindparam("uid")))


async def count_items(session: AsyncSession, uid: int) -> int:
    """How many roster items `uid` has (the quota check of a new item: read from the
    (user_id, contact_jid) unique index, only when an item is about to be added)."""
    return (await session.execute(_ITEM_COUNT, {"uid": uid})).scalar_one()


async def count_pending(session: AsyncSession, uid: int) -> int:
    """How many inbound requests of `uid` wait for an answer (quota check, as above)."""
    return (await session.execute(_PENDING_COUNT, {"uid": uid})).scalar_one()


async def delete_item(session: AsyncSession, uid: int, contact: str) -> bool:
    result = await session.execute(
        delete(RosterItem).where(RosterItem.user_id == uid, RosterItem.contact_jid == contact)
    )
    return rowcount(result) > 0


async def contacts_with(session: AsyncSession, uid: int, subscriptions: Collection[str]) -> list[str]:
    stmt = select(RosterItem.contact_jid).where(
        RosterItem.user_id == uid, RosterItem.subscription.in_(list(subscriptions))
    )
    return list(await session.scalars(stmt.order_by(RosterItem.id)))


async def has_pending(session: AsyncSession, uid: int, contact: str) -> bool:
    stmt = select(PendingSubscription.id).where(
        PendingSubscription.user_id == uid, PendingSubscription.from_jid == contact
    )
    return (await session.execute(stmt)).first() is not None


async def list_pending(session: AsyncSession, uid: int) -> list[str]:
    """The stored inbound request stanzas of `uid`, oldest first."""
    return list(await session.scalars(_PENDING, {"uid": uid}))


async def put_pending(session: AsyncSession, uid: int, contact: str, stanza: str) -> None:
    stmt = select(PendingSubscription).where(
        PendingSubscription.user_id == uid, PendingSubscription.from_jid == contact
    )
    row = (await session.scalars(stmt)).one_or_none()
    if row is None:
        session.add(PendingSubscription(user_id=uid, from_jid=contact, stanza=stanza))
    else:
        row.stanza = stanza
    await session.flush()


async def delete_pending(session: AsyncSession, uid: int, contact: str) -> bool:
    result = await session.execute(
        delete(PendingSubscription).where(
            PendingSubscription.user_id == uid, PendingSubscription.from_jid == contact
        )
    )
    return rowcount(result) > 0


async def befriend(session: AsyncSession, domain: str, circles: Sequence[Sequence[str]]) -> int:
    """Make the users of each circle each other's contacts, subscription both (a demo
    roster: their presence shows at once). One bulk insert; existing rows are kept.
    Returns the number of roster items added; commits."""
    everyone = [name for circle in circles for name in circle]
    ids = await user_ids(session, domain, everyone)
    existing = {(uid, contact) for uid, contact in (await session.execute(
        select(RosterItem.user_id, RosterItem.contact_jid).where(RosterItem.user_id.in_(list(ids.values())))
    )).all()}
    rows = [
        {"user_id": ids[user], "contact_jid": f"{contact}@{domain}", "subscription": "both",
         "ask_subscribe": False, "approved": False, "groups": json.dumps(["demo"])}
        for circle in circles for user in circle for contact in circle
        if user != contact and user in ids and contact in ids and (ids[user], f"{contact}@{domain}") not in existing
    ]
    if rows:
        await session.execute(insert(RosterItem), rows)
    await session.commit()
    return len(rows)
