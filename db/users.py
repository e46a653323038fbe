"""The user aggregate: accounts, SCRAM credentials, assigned and active node (SPEC §2).

Rules of this module:
- A username is a JID localpart, stored in its prepared form (`prep_localpart`).
- Passwords are never stored, only SCRAM keys for SCRAM-SHA-1 and SCRAM-SHA-256
  at 4096 iterations (`db.credentials`).
- Adding users (one or in bulk) is refused while any node is failed over (SPEC §2);
  a new user's assigned node comes from the Sync Agent (`server.assignment`) and its
  active node equals the assigned node.
- `bulk_import` validates every row before deriving any key, so a bad row costs no
  CPU and nothing is written; it inserts in batches in one transaction.
- Write functions commit; read functions do not.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from sqlalchemy import and_, bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from presence_ha.db.assignments import mode_and_topology, node_loads, refuse_during_failover
from presence_ha.db.clusters import get_cluster
from presence_ha.db.credentials import DEFAULT_ITERATIONS, MECHANISMS, ScramCredentials, derive_many
from presence_ha.db.engine import rowcount, translate_errors
from presence_ha.db.errors import AlreadyExists, InvalidValue, NotFound
from presence_ha.db.models import Node, User, UserCredential
from presence_ha.server.assignment import choose_node
from presence_ha.server.xmpp.jid import InvalidJid, prep_localpart

__all__ = [
    "ImportReport", "LoginRecord", "ScramCredentials", "UserInfo", "active_node_of", "add_user", "bulk_import",
    "get_credentials", "list_users", "login_record", "node_user_counts", "remove_user", "user_location",
    "usernames_active_on", "validate_username",
]

INSERT_BATCH = 1000
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class UserInfo:
    username: str
    assigned_node: str | None
    active_node: str | None


@dataclass(frozen=True)
class ImportReport:
    imported: int
    seconds: float


def validate_username(username: str) -> str:
    """The prepared localpart, or `InvalidValue('username', why)`."""
    try:
        return prep_localpart(username)
    except InvalidJid as exc:
        raise InvalidValue("username", f"{username!r}: {exc}") from None


def validate_password(password: str) -> None:
    if not password:
        raise InvalidValue("password", "must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidValue("password", f"longer than {MAX_PASSWORD_CHARS} characters")


def _validate_rows(rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    result, seen = [], set()
    for line, (username, password) in enumerate(rows, start=1):
        try:
            name = validate_username(username)
            validate_password(password)
        except InvalidValue as exc:
            raise InvalidValue(f"row {line} {exc.key}", exc.reason) from None
        if name in seen:
            raise InvalidValue(f"row {line} username", f"{name!r} appears twice")
        seen.add(name)
        result.append((name, password))
    return result


async def _existing(session: AsyncSession, names: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(names), INSERT_BATCH):
        query = select(User.username).where(User.username.in_(names[i : i + INSERT_BATCH]))
        found.update((await session.execute(query)).scalars().all())
    return found


async def _insert(session: AsyncSession, cluster_id: int, rows: list[tuple[str, str]], iterations: int) -> None:
    """Assign, derive keys and insert `rows` (validated, new); the caller commits."""
    mode, groups, ids = await mode_and_topology(session)
    load = await node_loads(session)
    keys = await derive_many([password for _, password in rows], iterations)
    for start in range(0, len(rows), INSERT_BATCH):
        batch = rows[start : start + INSERT_BATCH]
        values = []
        for name, _ in batch:
            node = choose_node(mode, groups, load)
            if node is not None:
                load[node] += 1
            node_id = ids[node] if node is not None else None
            values.append({"cluster_id": cluster_id, "username": name,
                           "assigned_node_id": node_id, "active_node_id": node_id})
        await session.execute(insert(User), values)
        user_ids = dict((await session.execute(
            select(User.username, User.id).where(User.username.in_([name for name, _ in batch]))
        )).all())
        creds = [
            {"user_id": user_ids[name], "mechanism": mech, **asdict(keys[start + i][mech])}
            for i, (name, _) in enumerate(batch)
            for mech in MECHANISMS
        ]
        await session.execute(insert(UserCredential), creds)


async def bulk_import(
    session: AsyncSession, rows: Iterable[tuple[str, str]], *, iterations: int = DEFAULT_ITERATIONS
) -> ImportReport:
    """Add many (username, password) users in one transaction; all or nothing; commit."""
    started = time.perf_counter()
    valid = _validate_rows(rows)
    cluster = await get_cluster(session)
    await refuse_during_failover(session, "adding users")
    async with translate_errors():
        taken = await _existing(session, [name for name, _ in valid])
        if taken:
            more = f" ({len(taken)} of the {len(valid)} users do)" if len(valid) > 1 else ""
            raise AlreadyExists(f"user {sorted(taken)[0]!r} already exists{more}")
        try:
            await _insert(session, cluster.id, valid, iterations)
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
    return ImportReport(len(valid), time.perf_counter() - started)


async def add_user(
    session: AsyncSession, username: str, password: str, *, iterations: int = DEFAULT_ITERATIONS
) -> UserInfo:
    """Add one user with SCRAM keys, assigned per the assignment mode; commit."""
    validate_username(username)
    validate_password(password)
    await bulk_import(session, [(username, password)], iterations=iterations)
    info = await find_user(session, validate_username(username))
    assert info is not None  # just committed
    return info


async def remove_user(session: AsyncSession, username: str) -> None:
    """Delete a user and everything it owns (credentials, roster, ...); commit."""
    name = validate_username(username)
    async with translate_errors():
        result = await session.execute(delete(User).where(User.username == name))
        await session.commit()
    if rowcount(result) == 0:
        raise NotFound(f"user {name!r} does not exist")


@functools.cache  # one immutable statement: building aliased joins per call cost ~50% of login CPU
def _located():
    assigned, active = aliased(Node), aliased(Node)
    return (
        select(User.username, assigned.name, active.name)
        .outerjoin(assigned, assigned.id == User.assigned_node_id)
        .outerjoin(active, active.id == User.active_node_id)
    )


async def list_users(session: AsyncSession, node_name: str | None = None) -> list[UserInfo]:
    """Every user (or those assigned to `node_name`), by username."""
    query = _located().order_by(User.username)
    if node_name:
        query = query.where(User.assigned_node_id == select(Node.id).where(Node.name == node_name).scalar_subquery())
    async with translate_errors():
        return [UserInfo(*row) for row in (await session.execute(query)).all()]


async def node_user_counts(session: AsyncSession) -> dict[str, tuple[int, int]]:
    """{node: (users assigned to it, users it serves now)} for every node (the admin page)."""
    counts: dict[str, list[int]] = {}
    async with translate_errors():
        for index, column in enumerate((User.assigned_node_id, User.active_node_id)):
            query = select(Node.name, func.count()).join(User, column == Node.id).group_by(Node.name)
            for name, count in (await session.execute(query)).all():
                counts.setdefault(name, [0, 0])[index] = count
    return {name: (assigned, served) for name, (assigned, served) in counts.items()}


# Login-path queries, built once: a statement object reused memoizes its cache key, so a
# login does not rebuild and re-hash the select (~10% of the event loop's login CPU).
_FIND_USER = _located().where(User.username == bindparam("username"))
_CREDENTIALS = (
    select(UserCredential.salt, UserCredential.iterations, UserCredential.stored_key, UserCredential.server_key)
    .join(User, User.id == UserCredential.user_id)
    .where(User.username == bindparam("username"), UserCredential.mechanism == bindparam("mechanism"))
)


@dataclass(frozen=True)
class LoginRecord:
    """What a login needs of its user, read at once: the SCRAM keys of the mechanism
    asked for (None: none stored), the assigned node and the node serving it now."""

    credentials: ScramCredentials | None
    assigned_node: str | None
    active_node: str | None


@functools.cache
def _login_statement():
    assigned, active = aliased(Node), aliased(Node)
    return (
        select(UserCredential.salt, UserCredential.iterations, UserCredential.stored_key,
               UserCredential.server_key, assigned.name, active.name)
        .select_from(User)
        .outerjoin(UserCredential, and_(UserCredential.user_id == User.id,
                                        UserCredential.mechanism == bindparam("mechanism")))
        .outerjoin(assigned, assigned.id == User.assigned_node_id)
        .outerjoin(active, active.id == User.active_node_id)
        .where(User.username == bindparam("username"))
    )


def login_record(conn: Connection, username: str, mechanism: str) -> LoginRecord | None:
    """Hot path (`db.hotpath`): keys and location of `username` in one read; None if no
    such user. Keys of an unknown mechanism are None, as `get_credentials` answers."""
    try:
        name = prep_localpart(username)
    except InvalidJid:
        return None
    row = conn.execute(_login_statement(), {"username": name, "mechanism": mechanism}).first()
    if row is None:
        return None
    salt, iterations, stored, server, assigned, active = row
    keys = ScramCredentials(salt, iterations, stored, server) if salt is not None and mechanism in MECHANISMS else None
    return LoginRecord(keys, assigned, active)


def active_node_of(conn: Connection, username: str) -> str | None:
    """Hot path (`db.hotpath`): the node serving `username` now (None: nobody, or no such user)."""
    try:
        name = prep_localpart(username)
    except InvalidJid:
        return None
    row = conn.execute(_FIND_USER, {"username": name}).first()
    return row[2] if row else None


async def find_user(session: AsyncSession, username: str) -> UserInfo | None:
    async with translate_errors():
        row = (await session.execute(_FIND_USER, {"username": username})).first()
    return UserInfo(*row) if row else None


async def user_location(session: AsyncSession, username: str) -> tuple[str | None, str | None] | None:
    """(assigned node name, active node name) of `username`, or None if no such user."""
    try:
        name = prep_localpart(username)
    except InvalidJid:
        return None
    info = await find_user(session, name)
    return (info.assigned_node, info.active_node) if info else None


async def active_nodes(session: AsyncSession, usernames: Iterable[str] | None = None) -> dict[str, str | None]:
    """`{username: name of the node serving it now (None: nobody)}` for every user, or
    for `usernames` only."""
    query = select(User.username, Node.name).outerjoin(Node, Node.id == User.active_node_id)
    if usernames is not None:
        query = query.where(User.username.in_(list(usernames)))
    async with translate_errors():
        return dict((await session.execute(query)).all())


_ACTIVE_ON = select(User.username).join(Node, Node.id == User.active_node_id).where(Node.name == bindparam("node"))


async def usernames_active_on(session: AsyncSession, node_name: str) -> set[str]:
    """The usernames that `node_name` serves right now."""
    async with translate_errors():
        return set((await session.execute(_ACTIVE_ON, {"node": node_name})).scalars().all())


def usernames_served_by(conn: Connection, node_name: str) -> set[str]:
    """Hot path (`db.hotpath`): `usernames_active_on`."""
    return set(conn.execute(_ACTIVE_ON, {"node": node_name}).scalars().all())


async def get_credentials(session: AsyncSession, username: str, mechanism: str) -> ScramCredentials | None:
    """The SCRAM keys of `username` for `mechanism`, or None (unknown user or mechanism)."""
    if mechanism not in MECHANISMS:
        return None
    try:
        name = prep_localpart(username)
    except InvalidJid:
        return None
    async with translate_errors():
        row = (await session.execute(_CREDENTIALS, {"username": name, "mechanism": mechanism})).first()
    return ScramCredentials(*row) if row else None
