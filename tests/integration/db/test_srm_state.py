"""SRM persistence on real databases: HA states, events, fenced user moves, the
"no new users while failed over" rule (SPEC §2, §6, §9), and DatabaseUnavailable."""

from __future__ import annotations

import asyncio

import pytest

from presence_ha.db import assignments, groups, schema, srm_state, users
from presence_ha.db.clusters import get_cluster
from presence_ha.db.engine import DatabaseUnavailable, make_engine, make_session_factory
from presence_ha.db.errors import FailoverInProgress, FencingConflict, InvalidValue, NotFound
from tests.integration.db.conftest import Cli, provision_pairs, query


@pytest.fixture
async def sessions(db_url):
    """A session factory on a migrated database holding groups g1 (a1,a2), g2 (b1,b2)."""
    await schema.upgrade(db_url)
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    await asyncio.to_thread(provision_pairs, Cli(db_url))
    yield factory
    await engine.dispose()


async def _add_users(factory, count):
    async with factory() as session:
        rows = [(f"u{i}", "pw") for i in range(count)]
        await users.bulk_import(session, rows)


async def test_adding_users_refused_while_failed_over(sessions):
    async with sessions() as session:
        for state in sorted(srm_state.FAILED_OVER_STATES):
            await _refused_in(session, state)


async def _refused_in(session, state):
    await srm_state.write_state(session, "a1", state, "On Admin Request", event="test")
    with pytest.raises(FailoverInProgress, match="node a1 is failed over"):
        await users.add_user(session, "late", "pw")
    with pytest.raises(FailoverInProgress):
        await users.bulk_import(session, [("late2", "pw")])
    with pytest.raises(FailoverInProgress):
        await assignments.rebalance(session)
    await srm_state.write_state(session, "a1", "Normal", "Normal", event="test")
    info = await users.add_user(session, "late", "pw")
    assert info.assigned_node == "a1"
    await users.remove_user(session, "late")


def test_cli_refuses_user_add_while_failed_over(db_url):
    cli = Cli(db_url)
    cli("db", "upgrade")
    provision_pairs(cli)

    async def fail_over(session):
        await srm_state.write_state(session, "b2", "Idle", "On Admin Request")

    query(db_url, fail_over)
    cli.fails("user", "add", "zed", "--password", "pw", match="node b2 is failed over")
    assert "users not rebalanced" in cli("param", "set", "user_assignment_mode", "Active-Standby").output


async def test_states_events_and_liveness(sessions):
    async with sessions() as session:
        assert await srm_state.read_state(session, "a1") is None
        await srm_state.renew_alive(session, "a1")
        first = await srm_state.read_state(session, "a1")
        assert first.state == "Initializing" and first.alive_at is not None
        await srm_state.write_state(session, "a1", "Normal", "Normal", event="PeerUp")
        normal = await srm_state.read_state(session, "a1")
        await srm_state.write_state(session, "a1", "Normal", "Normal", event="Tick")
        assert (await srm_state.read_state(session, "a1")).since == normal.since
        await srm_state.write_state(session, "a1", "Failing Over", "On Admin Request", event="AdminRequestedFailover")
        state = await srm_state.read_state(session, "a1")
        assert (state.state, state.reason) == ("Failing Over", "On Admin Request")
        events = await srm_state.list_events(session, "a1")
        assert [(e.from_state, e.to_state, e.event) for e in events] == [
            ("Normal", "Failing Over", "AdminRequestedFailover"),
            ("Normal", "Normal", "Tick"),
            ("Initializing", "Normal", "PeerUp"),
        ]
        with pytest.raises(InvalidValue, match=r"^state: 'Sleeping'"):
            await srm_state.write_state(session, "a1", "Sleeping", "Normal")
        with pytest.raises(InvalidValue, match=r"^reason: "):
            await srm_state.append_event(session, "a1", "Normal", "Normal", "Because", "x")
        assert await srm_state.failed_over_nodes(session) == ["a1"]


async def test_move_and_restore_users_are_fenced(sessions):
    await _add_users(sessions, 40)
    async with sessions() as session:
        a1_users = await users.usernames_active_on(session, "a1")
        assert len(a1_users) == 10
        epoch = await srm_state.group_epoch(session, "g1")
        polled = await groups.epoch_sum(session)  # the nodes' cheap "did users move?" poll
        new_epoch = await srm_state.move_users(session, "g1", "a1", "a2", epoch)
        assert new_epoch == epoch + 1
        assert await groups.epoch_sum(session) == polled + 1
        assert await users.usernames_active_on(session, "a1") == set()
        assert len(await users.usernames_active_on(session, "a2")) == 20
        assert len(await users.usernames_active_on(session, "b1")) == 10  # other group untouched
        home, active = await users.user_location(session, sorted(a1_users)[0])
        assert (home, active) == ("a1", "a2")
        with pytest.raises(FencingConflict, match="expected epoch 0, found 1"):
            await srm_state.restore_users(session, "g1", "a1", epoch)
        assert len(await users.usernames_active_on(session, "a2")) == 20  # loser wrote nothing
        with pytest.raises(NotFound, match="'b1' is not in this group"):
            await srm_state.move_users(session, "g1", "a1", "b1", new_epoch)
        assert await srm_state.group_epoch(session, "g1") == new_epoch
        assert await srm_state.restore_users(session, "g1", "a1", new_epoch) == new_epoch + 1
        assert await users.usernames_active_on(session, "a1") == a1_users


async def test_two_nodes_racing_one_wins(sessions):
    """Both SRMs of a pair try to take the group at the same epoch: exactly one succeeds."""
    await _add_users(sessions, 20)

    async def take(src, dst):
        async with sessions() as session:
            try:
                return await srm_state.move_users(session, "g1", src, dst, 0)
            except FencingConflict:
                return None

    results = await asyncio.gather(take("a1", "a2"), take("a2", "a1"))
    assert sorted(results, key=str) == [1, None]
    async with sessions() as session:
        served = [len(await users.usernames_active_on(session, n)) for n in ("a1", "a2")]
    assert sorted(served) == [0, 10]  # every user of g1 served by exactly one node


async def test_driver_failures_become_database_unavailable():
    engine = make_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    try:
        async with make_session_factory(engine)() as session:
            with pytest.raises(DatabaseUnavailable):
                await get_cluster(session)
    finally:
        await engine.dispose()
