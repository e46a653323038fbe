"""The message archive and PEP tables on real databases: RSM paging over the archive
(XEP-0059 with XEP-0313's filters), preferences, PEP items and their limits."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from presence_ha.db import archive, pep, schema, users
from presence_ha.db.archive import ArchiveQuery, ArchiveRow, PrefsRow, UnknownAnchor
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.db.hotpath import HotPath
from presence_ha.db.roster import user_id_of
from tests.integration.db.conftest import Cli, provision_pairs

DOMAIN = "example.com"
T0 = dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)


@pytest.fixture
async def hot(db_url):
    """A hot path on a migrated database with users u0 and u1; u0 has 10 messages
    archived, a minute apart: with bob (even) and carol (odd)."""
    await schema.upgrade(db_url)
    await asyncio.to_thread(provision_pairs, Cli(db_url), groups=1)
    engine = make_engine(db_url)
    async with make_session_factory(engine)() as session:
        await users.bulk_import(session, [("u0", "pw0"), ("u1", "pw1")], iterations=4096)
    await engine.dispose()
    path = HotPath(db_url)
    rows = [("u0", ArchiveRow(f"s{i}", "bob@example.com" if i % 2 == 0 else "carol@example.com", True,
                              T0 + dt.timedelta(minutes=i), f"<message><body>{i}</body></message>"))
            for i in range(10)]
    await path.run(archive.append_rows, DOMAIN, [*rows, ("nobody", rows[0][1])])  # nobody: no account
    yield path
    await path.dispose()


async def page(hot, **kwargs):
    found = await hot.run(archive.page_of, DOMAIN, "u0", ArchiveQuery(**kwargs))
    return [r.stanza_id for r in found.rows], found.complete, found.count, found.first_index


async def test_forward_paging(hot):
    assert await page(hot, max=4) == (["s0", "s1", "s2", "s3"], False, 10, 0)
    assert await page(hot, max=4, after="s3") == (["s4", "s5", "s6", "s7"], False, 10, 4)
    assert await page(hot, max=4, after="s7") == (["s8", "s9"], True, 10, 8)
    assert await page(hot, max=4, after="s9") == ([], True, 10, 0)


async def test_backward_paging(hot):
    assert await page(hot, max=4, last_page=True) == (["s6", "s7", "s8", "s9"], False, 10, 6)
    assert await page(hot, max=4, before="s6") == (["s2", "s3", "s4", "s5"], False, 10, 2)
    assert await page(hot, max=4, before="s2") == (["s0", "s1"], True, 10, 0)


async def test_filters(hot):
    assert await page(hot, with_jid="carol@example.com", max=3) == (["s1", "s3", "s5"], False, 5, 0)
    start, end = T0 + dt.timedelta(minutes=2), T0 + dt.timedelta(minutes=4)
    assert await page(hot, start=start, end=end) == (["s2", "s3", "s4"], True, 3, 0)
    assert await page(hot, max=0) == ([], False, 10, 0)  # a count only (XEP-0059 §2.7)


async def test_unknown_anchor_and_account(hot):
    with pytest.raises(UnknownAnchor):
        await page(hot, after="nope")
    assert await hot.run(archive.page_of, DOMAIN, "nobody", ArchiveQuery()) is None
    empty = await hot.run(archive.page_of, DOMAIN, "u1", ArchiveQuery())
    assert (empty.rows, empty.complete, empty.count) == ([], True, 0)


async def test_preferences(hot):
    assert await hot.run(archive.prefs_of, DOMAIN, "u0") == PrefsRow("always", (), ())
    wanted = PrefsRow("roster", ("a@example.com",), ("b@example.com",))
    assert await hot.run(archive.set_prefs, DOMAIN, "u0", wanted)
    assert await hot.run(archive.prefs_of, DOMAIN, "u0") == wanted
    assert await hot.run(archive.set_prefs, DOMAIN, "nobody", wanted) is None


def _publish(conn, node, options, item_id, payload="<p xmlns='urn:x'/>"):
    return pep.publish(conn, user_id_of(conn, DOMAIN, "u0"), node, options, item_id, payload)


async def test_pep_items_replace_trim_and_preconditions(hot):
    assert await hot.run(_publish, "urn:x", {"max_items": 2}, "a") == pep.NodeConfig("presence", 2, True)
    for item in ("b", "c", "b"):  # re-publishing b makes it the newest
        await hot.run(_publish, "urn:x", {}, item)
    _config, items = await hot.run(pep.items_of, DOMAIN, "u0", "urn:x", [], None)
    assert [i.item_id for i in items] == ["b", "c"]  # newest first, trimmed to 2
    with pytest.raises(pep.PreconditionNotMet):
        await hot.run(_publish, "urn:x", {"access_model": "open"}, "d")
    assert await hot.run(pep.last_items, DOMAIN, ["u0", "u1"], ["urn:x", "urn:y"]) == [
        (pep.Item("u0", "urn:x", "b", "<p xmlns='urn:x'/>"), "presence")]
    assert await hot.run(pep.items_of, DOMAIN, "u1", "urn:x", [], None) is None
