"""The cluster key file and the sealing of the database's secret values (server.cluster_key).

Scenarios: a sealed value opens with its key and name only (another key, another
name, a flipped byte and a clear value are refused, each saying what to do); sealing
twice gives two texts; a new key file is 0600 in a 0700 directory, never overwritten,
one key when created by many at once; a key file readable by others, missing or not
a key is refused naming the file; where the key is looked for.
"""

from __future__ import annotations

import base64
import concurrent.futures
import stat
from pathlib import Path

import pytest

from presence_ha.server.cluster_key import (
    CA_KEY,
    ENV_CLUSTER_KEY,
    PREFIX,
    SECRET,
    ClusterKey,
    ClusterKeyError,
    is_sealed,
    key_path,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def key(tmp_path) -> ClusterKey:
    return ClusterKey.create(tmp_path / "cluster.key")


def test_a_sealed_value_opens_with_its_key_and_name(key) -> None:
    sealed = key.seal("the-cluster-secret", SECRET)
    assert is_sealed(sealed) and "the-cluster-secret" not in sealed and len(sealed) <= 128  # clusters.secret
    assert key.open(sealed, SECRET) == "the-cluster-secret"
    assert key.seal("the-cluster-secret", SECRET) != sealed  # a fresh nonce each time


def test_another_key_does_not_open_it_and_says_what_to_do(key, tmp_path) -> None:
    other = ClusterKey.create(tmp_path / "other" / "cluster.key")
    with pytest.raises(ClusterKeyError, match=r"the cluster key at .*other/cluster.key does not open this "
                                              r"database's cluster-secret: copy cluster.key from"):
        other.open(key.seal("s", SECRET), SECRET)


def test_a_value_sealed_as_one_thing_does_not_open_as_another(key) -> None:
    with pytest.raises(ClusterKeyError, match="does not open"):
        key.open(key.seal("-----BEGIN PRIVATE KEY-----", CA_KEY), SECRET)


@pytest.mark.parametrize("position", [len(PREFIX), len(PREFIX) + 20, -3])
def test_a_changed_byte_is_refused(key, position) -> None:
    sealed = key.seal("the-cluster-secret", SECRET)
    raw = bytearray(base64.urlsafe_b64decode(sealed[len(PREFIX):]))
    raw[position if position < 0 else position - len(PREFIX)] ^= 1
    with pytest.raises(ClusterKeyError, match="does not open"):
        key.open(PREFIX + base64.urlsafe_b64encode(bytes(raw)).decode(), SECRET)


@pytest.mark.parametrize("stored", ["sealed1:not base64!", "sealed1:", "sealed1:AAAA"])
def test_garbage_is_refused_not_crashed_on(key, stored) -> None:
    with pytest.raises(ClusterKeyError, match="does not open"):
        key.open(stored, SECRET)


def test_a_clear_value_of_an_older_version_is_refused_with_the_remedy(key) -> None:
    with pytest.raises(ClusterKeyError, match=r"stored in clear .* run `presence-ha db upgrade`"):
        key.open("Zm9vYmFyLXNlY3JldC1pbi1jbGVhcg", SECRET)


def test_a_new_key_file_is_private_and_one_line(tmp_path) -> None:
    path = tmp_path / "fresh" / "dir" / "cluster.key"
    ClusterKey.create(path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    header, encoded = path.read_text().split()
    assert header == "presence-ha-cluster-key-1" and len(base64.urlsafe_b64decode(encoded)) == 32
    assert [p.name for p in path.parent.iterdir()] == ["cluster.key"]  # nothing left aside


def test_a_key_file_is_never_overwritten(key) -> None:
    sealed = key.seal("s", SECRET)
    again = ClusterKey.create(key.path)
    assert again.open(sealed, SECRET) == "s"
    assert ClusterKey.load_or_create(key.path).open(sealed, SECRET) == "s"


def test_many_creating_at_once_agree_on_one_key(tmp_path) -> None:
    path = tmp_path / "cluster.key"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: ClusterKey.load_or_create(path), range(16)))
    sealed = keys[0].seal("s", SECRET)
    assert all(k.open(sealed, SECRET) == "s" for k in keys)


def test_a_key_readable_by_others_is_refused(key) -> None:
    key.path.chmod(0o644)
    with pytest.raises(ClusterKeyError, match=r"readable by others \(mode 0644\): `chmod 600 "):
        ClusterKey.load(key.path)


def test_a_missing_key_names_the_file_and_where_to_get_it(tmp_path) -> None:
    with pytest.raises(ClusterKeyError, match=r"no cluster key at .*nowhere/cluster.key: copy cluster.key from"):
        ClusterKey.load(tmp_path / "nowhere" / "cluster.key")


@pytest.mark.parametrize("text", ["", "presence-ha-cluster-key-1 c2hvcnQ=\n", "something else entirely\n",
                                  "presence-ha-cluster-key-1 !!!!\n"])
def test_a_file_that_is_not_a_key_is_refused(tmp_path, text) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ClusterKeyError, match="is not a presence-ha cluster key"):
        ClusterKey.load(path)


def test_where_the_key_is_looked_for() -> None:
    env = {ENV_CLUSTER_KEY: "/etc/presence-ha/cluster.key"}
    assert key_path("/k", "/d", "sqlite:////db/x.sqlite3", env) == Path("/k")
    assert key_path(None, "/d", "sqlite:////db/x.sqlite3", env) == Path("/etc/presence-ha/cluster.key")
    assert key_path(None, "/d", "sqlite:////db/x.sqlite3", {}) == Path("/d/cluster.key")
    assert key_path(None, None, "sqlite:////db/x.sqlite3", {}) == Path("/db/cluster.key")
    assert key_path(None, None, "sqlite+aiosqlite:////db/x.db", {}) == Path("/db/cluster.key")
    assert key_path(None, None, "postgresql://u@h/db", {}) == Path("data/cluster.key")
    assert key_path(None, None, None, {}) == Path("data/cluster.key")
