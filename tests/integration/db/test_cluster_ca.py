"""The cluster CA in the availability database (db.clusters.cluster_ca, migration 0002).

Scenarios: `cluster init` makes the CA and `cluster ca` prints it; two nodes asking for
it at once agree on one; a database made before the CA existed (revision 0001) keeps
its cluster across the upgrade and gets a CA when it is first asked for.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from presence_ha.db import clusters, schema
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.server.tls import make_ca


def test_init_makes_the_ca_and_ca_prints_it(cli) -> None:
    out = cli("cluster", "init", "--name", "c", "--domain", "example.test").output
    assert "cluster ca" in out
    pem = cli("cluster", "ca").output
    assert pem.startswith("-----BEGIN CERTIFICATE-----") and pem == cli("cluster", "ca").output
    assert "PRIVATE KEY" not in pem


async def _both(url: str) -> list[tuple[str, str]]:
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)

        async def one() -> tuple[str, str]:
            async with factory() as session:
                return await clusters.cluster_ca(session, make_ca)

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
    async def go() -> tuple[str, str]:
        await schema.upgrade(db_url, "0001")
        engine = make_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO clusters (name, domain, secret) "
                                           "VALUES ('old', 'example.test', 's3cret')"))
            await schema.upgrade(db_url)
            async with make_session_factory(engine)() as session:
                assert (await clusters.get_cluster(session)).name == "old"
                assert await clusters.cluster_secret(session) == "s3cret"
                return await clusters.cluster_ca(session, make_ca)
        finally:
            await engine.dispose()

    cert, key = asyncio.run(go())
    assert cert.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" in key
