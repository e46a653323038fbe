"""Migration 0004 (block lists, vCards, last activity) on a database that already has
users: `db upgrade` keeps them and the new tables work, on both backends; the block
list comes with the roster in one hot-path read."""

from __future__ import annotations

from sqlalchemy import insert, select

from presence_ha.db import blocklist, schema
from presence_ha.db.engine import make_engine
from presence_ha.db.hotpath import HotPath
from presence_ha.db.models import BlockedJid, Cluster, RosterItem, User


async def test_upgrade_of_a_populated_database_keeps_users_and_adds_the_tables(db_url):
    assert await schema.upgrade(db_url, "0002") == "0002"
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            cluster = (await conn.execute(insert(Cluster).values(name="c", domain="d.test", secret="s"))
                       ).inserted_primary_key[0]
            await conn.execute(insert(User).values(cluster_id=cluster, username="alice"))
        assert await schema.upgrade(db_url) == schema.head_revision()
        async with engine.begin() as conn:
            uid = (await conn.execute(select(User.id).where(User.username == "alice"))).scalar_one()
            await conn.execute(insert(BlockedJid).values(user_id=uid, jid="eve@d.test"))
            await conn.execute(insert(RosterItem).values(user_id=uid, contact_jid="bob@d.test", subscription="both",
                                                         ask_subscribe=False, approved=False, groups="[]"))
            await conn.execute(insert(RosterItem).values(user_id=uid, contact_jid="carol@d.test", subscription="to",
                                                         ask_subscribe=False, approved=False, groups="[]"))
    finally:
        await engine.dispose()
    hot = HotPath(db_url)
    try:
        assert await hot.run(blocklist.roster_and_blocks_of, "d.test", "alice") == (
            [("bob@d.test", "both"), ("carol@d.test", "to")], ["eve@d.test"])
        assert await hot.run(blocklist.roster_and_blocks_of, "d.test", "nobody") is None
    finally:
        await hot.dispose()
