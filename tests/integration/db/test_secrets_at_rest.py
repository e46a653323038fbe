"""The cluster secret and CA key at rest, through the real CLI, on SQLite and PostgreSQL.

Scenarios: `cluster init` seals both with the cluster key it creates (0600) and says
where it is, and refuses a second cluster without making a key; `cluster
rotate-secret` stores a new sealed secret, and with a wrong key changes nothing and
says what to do; `db upgrade` seals what an older version stored in clear, once, and
the values stay the same; a node refuses to start with a wrong key or on a clear
secret, in one line with the remedy.
"""

from __future__ import annotations

import stat

import sqlalchemy as sa

from presence_ha.db import clusters
from presence_ha.db.engine import make_engine
from presence_ha.server import cluster_key
from presence_ha.server.cluster_key import CA_KEY, SECRET, ClusterKey
from tests.integration.db.conftest import query


def stored(url: str) -> tuple[str, str | None]:
    async def read(session):
        return await clusters.stored_secret(session), await clusters.stored_ca_key(session)

    return query(url, read)


def run_sql(url: str, statement: str, **params) -> None:
    import asyncio

    async def go() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(statement), params)
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_init_seals_the_secret_and_the_ca_key_with_a_new_private_key_file(cli, tmp_path) -> None:
    path = tmp_path / "keys" / "cluster.key"
    out = cli("cluster", "init", "--name", "c", "--domain", "example.test", "--cluster-key", str(path)).output
    assert f"sealed with the cluster key {path} (mode 0600)" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret, ca_key = stored(cli.url)
    assert cluster_key.is_sealed(secret) and cluster_key.is_sealed(ca_key or "")
    key = ClusterKey.load(path)
    assert len(key.open(secret, SECRET)) >= 32 and "PRIVATE KEY" in key.open(ca_key or "", CA_KEY)
    assert key.open(secret, SECRET) not in cli("cluster", "show").output
    other = tmp_path / "second" / "cluster.key"
    cli.fails("cluster", "init", "--name", "d", "--domain", "example.test", "--cluster-key", str(other),
              match="already exists")
    assert not other.parent.exists()


def test_rotation_stores_a_new_sealed_secret_and_a_wrong_key_changes_nothing(cli, tmp_path) -> None:
    path = tmp_path / "cluster.key"
    cli("cluster", "init", "--name", "c", "--domain", "example.test", "--cluster-key", str(path))
    before, _ = stored(cli.url)
    out = cli("cluster", "rotate-secret", "--cluster-key", str(path)).output
    assert "cluster secret rotated" in out and "the old admin token is no longer valid" in out
    after, _ = stored(cli.url)
    key = ClusterKey.load(path)
    assert cluster_key.is_sealed(after) and key.open(after, SECRET) != key.open(before, SECRET)
    wrong = ClusterKey.create(tmp_path / "wrong" / "cluster.key")
    cli.fails("cluster", "rotate-secret", "--cluster-key", str(wrong.path),
              match=f"the cluster key at {wrong.path} does not open this database's cluster-secret")
    assert stored(cli.url)[0] == after


def test_upgrade_seals_clear_values_of_an_older_version_once(cli, tmp_path) -> None:
    path = tmp_path / "cluster.key"
    cli("cluster", "init", "--name", "c", "--domain", "example.test", "--cluster-key", str(path))
    ca_pem = ClusterKey.load(path).open(stored(cli.url)[1] or "", CA_KEY)
    run_sql(cli.url, "UPDATE clusters SET secret = :s, ca_key = :k", s="an-older-versions-clear-secret", k=ca_pem)
    path.unlink()  # and no key yet: `db upgrade` makes one
    out = cli("db", "upgrade", "--cluster-key", str(path)).output
    assert f"the cluster secret and the cluster CA key sealed with the cluster key {path}" in out
    secret, ca_key = stored(cli.url)
    key = ClusterKey.load(path)
    assert key.open(secret, SECRET) == "an-older-versions-clear-secret" and key.open(ca_key or "", CA_KEY) == ca_pem
    assert "sealed" not in cli("db", "upgrade", "--cluster-key", str(path)).output
    assert stored(cli.url) == (secret, ca_key)


def test_a_node_refuses_a_wrong_key_and_a_clear_secret(cli, tmp_path) -> None:
    path = tmp_path / "cluster.key"
    cli("cluster", "init", "--name", "c", "--domain", "example.test", "--cluster-key", str(path))
    cli("node", "add", "n1")
    wrong = ClusterKey.create(tmp_path / "wrong" / "cluster.key")
    run = ("node", "run", "--name", "n1", "--data-dir", str(tmp_path / "n1"))
    cli.fails(*run, "--cluster-key", str(wrong.path),
              match=f"cannot start node n1: the cluster key at {wrong.path} does not open this database's")
    cli.fails(*run, "--cluster-key", str(tmp_path / "missing.key"), match="no cluster key at")
    run_sql(cli.url, "UPDATE clusters SET secret = 'an-older-versions-clear-secret'")
    cli.fails(*run, "--cluster-key", str(path), match="stored in clear in the database (an older version wrote it): "
              "run `presence-ha db upgrade`")
