"""The cluster CA in the availability database (db.clusters.cluster_ca, migration 0002).

Scenarios: `cluster init` makes the CA and `cluster ca` prints it; two nodes asking for
it at once agree on one; a database made before the CA existed (revision 0001) keeps
its cluster across `db upgrade`, which seals its clear secret with the cluster key,
and gets a CA (its key sealed) when it is first asked for.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from presence_ha.db import clusters, schema
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.server import cluster_key
from tests.integration.cluster import cluster_key_of


def test_init_makes_the_ca_and_ca_prints_it(cli) -> None:
    out = cli("cluster", "init", "--name", "c", "--domain", "example.test").output
    assert "cluster ca" in out
    pem = cli("cluster", "ca").output
    assert pem.startswith("-----BEGIN CERTIFICATE-----") and pem == cli("cluster", "ca").output
    assert "PRIVATE KEY" not in pem


async def _both(url: str) -> list[tuple[str, str]]:
    engine = make_engine(url)
    key = cluster_key_of(url)
    try:
        factory = make_session_factory(engine)

        async def one() -> tuple[str, str]:
            async with factory() as session:
                return await cluster_key.cluster_ca(session, key)

        return await asyncio.gather(one(), one())
    finally:
        await engine.dispose()


def test_two_nodes_asking_at_once_get_one_ca(cli) -> None:
    cli("cluster", "init", "--name", "c", "--domain", "example.test")
    engine_url = cli.url

    async def clear() -> None:
        engine = make_engine(engine_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text("UPDATE clusters SET ca_cert = NULL, ca_key = NULL"))
        finally:
            await engine.dispose()

    asyncio.run(clear())
    first, second = asyncio.run(_both(engine_url))
    assert first == second


def test_a_database_from_before_the_ca_is_upgraded_with_its_cluster(db_url) -> None:
    from tests.integration.db.conftest import Cli

    async def old_database() -> None:
        await schema.upgrade(db_url, "0001")
        engine = make_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO clusters (name, domain, secret) "
                                           "VALUES ('old', 'example.test', 's3cret-of-an-older-version')"))
        finally:
            await engine.dispose()

    async def after_upgrade() -> tuple[str, str, str]:
        engine = make_engine(db_url)
        key = cluster_key_of(db_url)
        try:
            async with make_session_factory(engine)() as session:
                assert (await clusters.get_cluster(session)).name == "old"
                stored = await clusters.stored_secret(session)
                assert "s3cret" not in stored and cluster_key.is_sealed(stored)
                cert, private = await cluster_key.cluster_ca(session, key)
                assert cluster_key.is_sealed(await clusters.stored_ca_key(session) or "")
                return await cluster_key.cluster_secret(session, key), cert, private
        finally:
            await engine.dispose()

    asyncio.run(old_database())
    assert "the cluster secret sealed with the cluster key" in Cli(db_url)("db", "upgrade").output
    secret, cert, key = asyncio.run(after_upgrade())
    assert secret == "s3cret-of-an-older-version"
    assert cert.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" in key
