"""The cluster aggregate: one cluster per availability database (SPEC §1).

Rules of this module:
- A database holds exactly one cluster, because all nodes of a cluster share one
  logical database and nothing else does. `create_cluster` refuses a second one, so
  "both nodes in the same cluster" (SPEC §3) holds by construction for nodes created
  here; `db.groups` still checks it.
- The cluster secret and the CA's private key are stored as the caller gives them:
  sealed with the cluster key (`server.cluster_key`; this layer does no cryptography),
  so a reader of the database cannot use them. `show` never prints them.
- The cluster CA is made by the caller's function (`server.cluster_key.cluster_ca`)
  the first time it is asked for, and stored once.
- The stored secret changes only by compare-and-set (`replace_secret`), so two
  rotations at once cannot both believe they won.
- Write functions commit; read functions do not.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.engine import rowcount, translate_errors
from presence_ha.db.errors import AlreadyExists, InvalidValue, NotFound
from presence_ha.db.models import Cluster
from presence_ha.server.xmpp.jid import InvalidJid, prep_domain

CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True)
class ClusterInfo:
    id: int
    name: str
    domain: str
    created_at: dt.datetime | None


def _info(row: Cluster) -> ClusterInfo:
    return ClusterInfo(row.id, row.name, row.domain, row.created_at)


def validate_cluster_name(name: str) -> str:
    if not CLUSTER_NAME_RE.fullmatch(name):
        raise InvalidValue("cluster name", "1-128 characters of A-Z a-z 0-9 _ . -")
    return name


async def refuse_second_cluster(session: AsyncSession) -> None:
    """`AlreadyExists` if the database has its cluster already."""
    existing = await find_cluster(session)
    if existing is not None:
        raise AlreadyExists(
            f"cluster {existing.name!r} already exists in this database (one cluster per database); nothing changed"
        )


async def create_cluster(session: AsyncSession, name: str, domain: str, stored_secret: str) -> ClusterInfo:
    """Create the database's cluster with its (sealed) secret."""
    validate_cluster_name(name)
    try:
        domain = prep_domain(domain)
    except InvalidJid as exc:
        raise InvalidValue("domain", str(exc)) from exc
    await refuse_second_cluster(session)
    async with translate_errors():
        row = Cluster(name=name, domain=domain, secret=stored_secret)
        session.add(row)
        await session.commit()
        await session.refresh(row)
        return _info(row)


async def find_cluster(session: AsyncSession) -> ClusterInfo | None:
    async with translate_errors():
        row = (await session.execute(select(Cluster).order_by(Cluster.id))).scalars().first()
    return _info(row) if row else None


async def get_cluster(session: AsyncSession) -> ClusterInfo:
    """The database's cluster; `NotFound` with the remedy if there is none yet."""
    info = await find_cluster(session)
    if info is None:
        raise NotFound("no cluster in this database: run `presence-ha cluster init` first")
    return info


async def cluster_ca(session: AsyncSession, make_ca: Callable[[str], tuple[str, str]]) -> tuple[str, str]:
    """The cluster CA (certificate PEM, stored key), made with `make_ca(domain)` if there is
    none yet. Two nodes starting at once may both make one: the first to commit wins
    (compare-and-set on the empty column) and the other reads the winner's."""
    cluster = await get_cluster(session)
    async with translate_errors():
        row = (await session.execute(select(Cluster.ca_cert, Cluster.ca_key).where(Cluster.id == cluster.id))).one()
        if row.ca_cert is None or row.ca_key is None:
            cert, key = make_ca(cluster.domain)
            await session.execute(update(Cluster).where(Cluster.id == cluster.id, Cluster.ca_cert.is_(None))
                                  .values(ca_cert=cert, ca_key=key))
            await session.commit()
            row = (await session.execute(select(Cluster.ca_cert, Cluster.ca_key)
                                         .where(Cluster.id == cluster.id))).one()
        return row.ca_cert, row.ca_key


async def stored_secret(session: AsyncSession) -> str:
    """The cluster secret as stored (sealed: `server.cluster_key.cluster_secret` opens it)."""
    cluster = await get_cluster(session)
    async with translate_errors():
        return (await session.execute(select(Cluster.secret).where(Cluster.id == cluster.id))).scalar_one()


async def stored_ca_key(session: AsyncSession) -> str | None:
    """The cluster CA's private key as stored, or None before the CA is made."""
    cluster = await get_cluster(session)
    async with translate_errors():
        return (await session.execute(select(Cluster.ca_key).where(Cluster.id == cluster.id))).scalar_one()


async def replace_secret(session: AsyncSession, old: str, new: str) -> bool:
    """Store `new` if the stored secret is still `old` (compare-and-set); whether it was."""
    cluster = await get_cluster(session)
    async with translate_errors():
        result = await session.execute(update(Cluster).where(Cluster.id == cluster.id, Cluster.secret == old)
                                       .values(secret=new))
        await session.commit()
    return rowcount(result) == 1


async def replace_ca_key(session: AsyncSession, old: str, new: str) -> bool:
    """Store `new` as the CA's key if it is still `old` (compare-and-set); whether it was."""
    cluster = await get_cluster(session)
    async with translate_errors():
        result = await session.execute(update(Cluster).where(Cluster.id == cluster.id, Cluster.ca_key == old)
                                       .values(ca_key=new))
        await session.commit()
    return rowcount(result) == 1
