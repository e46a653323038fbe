"""The node's hot-path operations (`db.hotpath`) on real databases: the one-read login
record, presence record batches, user locations, and a dead database."""

from __future__ import annotations

import asyncio

import pytest

from presence_ha.db import offline, presence, roster, schema, users
from presence_ha.db.engine import DatabaseUnavailable, make_engine, make_session_factory
from presence_ha.db.hotpath import HotPath
from presence_ha.db.roster import user_id
from tests.integration.db.conftest import Cli, provision_pairs

DOMAIN = "example.com"


@pytest.fixture
async def hot(db_url):
    """A hot path on a migrated database with groups g1 (a1,a2), g2 (b1,b2) and users u0-u3."""
    await schema.upgrade(db_url)
    await asyncio.to_thread(provision_pairs, Cli(db_url))
    engine = make_engine(db_url)
    async with make_session_factory(engine)() as session:
        await users.bulk_import(session, [(f"u{i}", f"pw{i}") for i in range(4)], iterations=4096)
    path = HotPath(db_url)
    path.engine, path.factory = engine, make_session_factory(engine)  # for the checks below
    yield path
    await path.dispose()
    await engine.dispose()


async def test_login_record_reads_keys_and_location_at_once(hot):
    record = await hot.run(users.login_record, "u1", "SCRAM-SHA-256")
    async with hot.factory() as session:
        keys = await users.get_credentials(session, "u1", "SCRAM-SHA-256")
        location = await users.user_location(session, "u1")
    assert record.credentials == keys
    assert (record.assigned_node, record.active_node) == location
    assert record.active_node is not None


async def test_login_record_of_unknowns(hot):
    assert await hot.run(users.login_record, "nobody", "SCRAM-SHA-1") is None
    assert await hot.run(users.login_record, "bad user", "SCRAM-SHA-1") is None  # not a valid localpart
    # A known user and a mechanism without keys: the location, no keys (SASL says "not-authorized").
    record = await hot.run(users.login_record, "U1", "DIGEST-MD5")  # nodeprep folds the case
    assert record is not None and record.credentials is None and record.active_node is not None


async def test_active_node_of(hot):
    record = await hot.run(users.login_record, "u2", "SCRAM-SHA-1")
    assert await hot.run(users.active_node_of, "u2") == record.active_node
    assert await hot.run(users.active_node_of, "ghost") is None


async def _records(hot, name):
    async with hot.factory() as session:
        uid = await user_id(session, DOMAIN, name)
        return {(r.resource, r.priority, r.stanza) for r in await presence.list_for(session, uid)}


async def test_write_batch_upserts_deletes_and_names_unknown_users(hot):
    unknown = await hot.run(presence.write_batch, DOMAIN, "a1", {
        ("u0", "phone"): (5, "<presence><show>away</show></presence>"),
        ("u0", "laptop"): (0, "<presence/>"),
        ("ghost", "x"): (0, "<presence/>"),
    })
    assert unknown == {"ghost"}
    assert await _records(hot, "u0") == {("phone", 5, "<presence><show>away</show></presence>"),
                                         ("laptop", 0, "<presence/>")}

    unknown = await hot.run(presence.write_batch, DOMAIN, "a2", {
        ("u0", "phone"): (1, "<presence><show>dnd</show></presence>"),  # an update, by another node
        ("u0", "laptop"): None,  # a delete
        ("u0", "never-written"): None,  # deleting nothing is no error for a known user
        ("ghost", "y"): None,
    })
    assert unknown == {"ghost"}
    assert await _records(hot, "u0") == {("phone", 1, "<presence><show>dnd</show></presence>")}


async def _active(hot, name):
    return await hot.run(users.active_node_of, name)


async def test_retiring_a_taken_over_nodes_records_keeps_the_ones_back_and_the_rewritten(hot):
    """`retire_written_by` (after a takeover's grace period): the records the old node
    wrote for users the new node serves go in one transaction, except those of
    resources back already (`keep`); one rewritten by another node is not the old
    node's any more, and one of a user served elsewhere is not this node's to retire."""
    server = await _active(hot, "u0")
    assert await _active(hot, "u1") != server
    await hot.run(presence.write_batch, DOMAIN, "a2", {
        ("u0", "phone"): (0, "<presence/>"), ("u0", "laptop"): (0, "<presence/>"),
        ("u0", ""): (0, "<presence/>"), ("u0", "back"): (0, "<presence/>"), ("u1", "x"): (0, "<presence/>")})
    await hot.run(presence.write_batch, DOMAIN, "b1", {("u0", "laptop"): (3, "<presence/>")})  # rewritten
    async with hot.factory() as session, session.begin():
        gone = await presence.retire_written_by(session, "a2", server, keep={("u0", "back")})
    assert sorted(gone) == [("u0", ""), ("u0", "phone")]
    assert await _records(hot, "u0") == {("laptop", 3, "<presence/>"), ("back", 0, "<presence/>")}
    assert await _records(hot, "u1") == {("x", 0, "<presence/>")}
    async with hot.factory() as session, session.begin():
        assert await presence.retire_written_by(session, "a2", server, keep=set()) == [("u0", "back")]
        assert await presence.retire_written_by(session, "a2", server, keep=set()) == []
        assert await presence.retire_written_by(session, "nobody", server, keep=set()) == []


async def test_write_batch_of_another_domain_writes_nothing(hot):
    unknown = await hot.run(presence.write_batch, "elsewhere.example", "a1", {("u0", "r"): (0, "<presence/>")})
    assert unknown == {"u0"}
    assert await _records(hot, "u0") == set()


async def test_a_dead_database_is_database_unavailable(tmp_path):
    path = HotPath(f"sqlite:///{tmp_path / 'missing-dir-is-made' / 'empty.sqlite3'}")
    try:
        with pytest.raises(DatabaseUnavailable):
            await path.run(users.login_record, "u0", "SCRAM-SHA-1")  # no schema: no such table
    finally:
        await path.dispose()


@pytest.mark.postgres
async def test_postgres_unreachable_is_database_unavailable():
    path = HotPath("postgresql://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    try:
        with pytest.raises(DatabaseUnavailable):
            await path.run(users.active_node_of, "u0")
    finally:
        await path.dispose()


async def test_offline_store_respects_the_cap_and_take_hands_out_once(hot):
    store = lambda i: hot.run(  # noqa: E731
        offline.store_by_name, DOMAIN, "u1", f"<message><body>{i}</body></message>", 2, 10**6)
    assert await store(0) is True and await store(1) is True
    assert await store(2) is False  # the cap: nothing stored
    assert await hot.run(offline.store_by_name, DOMAIN, "ghost", "<message/>", 2, 10**6) is None
    first, second = await asyncio.gather(*(hot.run(offline.take_by_name, DOMAIN, "u1") for _ in range(2)))
    taken = first + second
    assert taken == ["<message><body>0</body></message>", "<message><body>1</body></message>"]  # once, in order
    assert await hot.run(offline.take_by_name, DOMAIN, "u1") == []
    assert await hot.run(offline.take_by_name, DOMAIN, "ghost") is None


async def test_offline_store_respects_the_byte_quota_in_utf8_bytes(hot):
    """The quota counts UTF-8 bytes (from the rows' `bytes`, not the stanzas): two
    messages of 2 x 300 + 32 bytes fit in 1,300, a third does not, and taking them
    makes room again."""
    message = f"<message><body>{'é' * 300}</body></message>"
    size = len(message.encode())
    assert size == 632
    store = lambda: hot.run(offline.store_by_name, DOMAIN, "u2", message, 100, 1300)  # noqa: E731
    assert await store() is True and await store() is True
    assert await store() is False
    assert await hot.run(offline.store_by_name, DOMAIN, "u2", "<message/>", 100, 1300) is True  # 10 bytes fit
    assert len(await hot.run(offline.take_by_name, DOMAIN, "u2")) == 3
    assert await store() is True


async def test_reads_by_username_name_unknown_accounts_none(hot):
    assert await hot.run(roster.items_of, DOMAIN, "u0") == []
    assert await hot.run(roster.subscriptions_of, DOMAIN, "u0") == []
    assert await hot.run(roster.pending_of, DOMAIN, "u0") == []
    assert await hot.run(presence.list_of, DOMAIN, "u0") == []
    for fn in (roster.items_of, roster.subscriptions_of, roster.pending_of, presence.list_of):
        assert await hot.run(fn, DOMAIN, "ghost") is None
    await hot.run(presence.write_batch, DOMAIN, "a1", {("u2", "r"): (3, "<presence/>")})
    assert await hot.run(presence.records_of_users, DOMAIN, ["u2", "u3", "ghost"]) == {
        "u2": [presence.PresenceRow("r", 3, "<presence/>")]}
    assert "u2" in await hot.run(users.usernames_served_by, await hot.run(users.active_node_of, "u2"))
