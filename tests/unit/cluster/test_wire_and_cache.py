"""Pure parts of server.cluster: frame encoding, origin checks, the location cache, the inbox."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.cluster import wire
from presence_ha.server.cluster.inbox import Inbox
from presence_ha.server.cluster.locations import LocationCache
from presence_ha.server.config import ConfigError, load_config


def message(frm: str = "alice@example.test/a") -> ET.Element:
    elem = ET.Element("message", {"to": "bob@example.test", "from": frm, "type": "chat"})
    ET.SubElement(elem, "body").text = "hi <&> there"
    ET.SubElement(elem, "{urn:xmpp:hints}no-store")
    return elem


def test_routed_and_session_frames_round_trip():
    routed = wire.decode_stanza(wire.encode_routed(message()))
    assert isinstance(routed, wire.Routed)
    assert routed.stanza.findtext("body") == "hi <&> there"
    assert routed.stanza.find("{urn:xmpp:hints}no-store") is not None
    up = wire.decode_stanza(wire.encode_session("ab12", message(), upstream=True))
    down = wire.decode_stanza(wire.encode_session("ab12", message(), upstream=False))
    assert (up.sid, up.upstream, down.upstream) == ("ab12", True, False)


@pytest.mark.parametrize("payload", [
    b"no header line", b"X\n<message/>", b"R\n<notastanza/>", b"R\n<message>",
    b"R\n<!DOCTYPE m [<!ENTITY a 'aaaa'>]><message>&a;</message>", b"U \n<message/>",
    b"R\n<message>&a;</message>", b"R\n<message><!-- c --></message>", b"R\n<!-- c --><message/>",
    b"R\n<?xml version='1.0'?><message/>", b"R\n<message><?pi x?></message>", b"R\n<message/><message/>",
    b"R\n<message><body><?pi?></body></message>", b"R\n<message>\0</message>", b"R\n<message>&#0;</message>",
    b"R\n" + "\ufeff<!DOCTYPE m [<!ENTITY a 'aaaa'>]><message>&a;</message>".encode("utf-16"),
    b"R\n" + "<message/>".encode("utf-16"), b"R\n <message/>", b"R\n<message/> ", b"R\n<message/>x<message/>",
    b"R\n<message><body>", b"R\n</frames>", b"R\n<message/></frames>",
    b"R\n<message><_/>", b"R\n<message/><_/>", b"R\n<message/><_ a='1'/>", b"R\n<message><_/></message><_>",
])
def test_bad_stanza_frames_are_refused(payload):
    with pytest.raises(wire.WireError):
        wire.decode_stanza(payload)


def test_a_cdata_section_is_text():
    routed = wire.decode_stanza(b"R\n<message from='a@x'><body><![CDATA[<b>&]]></body></message>")
    assert routed.stanza.findtext("body") == "<b>&"


def test_a_bad_frame_does_not_spoil_the_next_ones():
    for bad in (b"R\n<message><body>", b"R\n</frames>", b"R\n<message/><message/>", b"R\n<message x='1' x='2'/>",
                b"R\n<message><!-- c --></message>", b"R\n<message><?pi?></message>",
                b"R\n<message><_/>", b"R\n<message/><_/>"):
        with pytest.raises(wire.WireError):
            wire.decode_stanza(bad)
        good = wire.decode_stanza(wire.encode_routed(message()))
        assert good.stanza.findtext("body") == "hi <&> there" and good.stanza.tail is None


def test_the_parser_is_renewed_after_its_life(monkeypatch):
    monkeypatch.setattr(wire, "_PARSER_LIFE", 3)
    monkeypatch.setattr(wire, "_parser", wire._StanzaParser())
    first = wire._parser._parser
    for _ in range(3):
        assert wire.decode_stanza(wire.encode_routed(message())).stanza.tag == "message"
    assert wire._parser._parser is not first


def test_parsed_stanzas_are_what_the_sender_serialized():
    stanza = message()
    stanza.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    ET.SubElement(stanza, "{urn:x}data", {"{urn:y}attr": "a'\"b"}).text = "\u00e9t\u00e9 &amp;"
    parsed = wire.decode_stanza(wire.encode_routed(stanza)).stanza
    assert ET.tostring(parsed) == ET.tostring(stanza)


def test_routed_recipient_is_read_without_parsing():
    payload = wire.encode_routed(message())
    assert wire.routed_recipient(payload) == "bob@example.test"
    elem = ET.Element("presence", {"from": "a@example.test/x", "to": "\u00e9l\u00e8ve@example.test/r"})
    assert wire.routed_recipient(wire.encode_routed(elem)) == "\u00e9l\u00e8ve@example.test"
    odd = ET.Element("message", {"to": "x&y@example.test"})  # escaped: unknown until parsed
    assert wire.routed_recipient(wire.encode_routed(odd)) is None
    assert wire.routed_recipient(wire.encode_session("s1", message(), upstream=True)) is None
    assert wire.routed_recipient(b"R\n<message from='a@example.test'/>") is None


def test_control_frames():
    control = wire.decode_control(wire.encode_control(wire.Op.OPEN, sid="s1", jid="a@b/c"))
    assert control.op is wire.Op.OPEN and control.text("jid") == "a@b/c"
    for bad in (b"{}", b"[1]", b"not json", b'{"op": "explode"}'):
        with pytest.raises(wire.WireError):
            wire.decode_control(bad)


def test_origin_must_be_the_cluster_domain():
    wire.check_origin(message(), "example.test")
    wire.check_origin(message("example.test"), "example.test")
    for frm in ("mallory@evil.test/x", "", "@@"):
        with pytest.raises(wire.WireError):
            wire.check_origin(message(frm), "example.test")


def dial(env: dict[str, str]) -> dict[str, tuple[str, int]]:
    return load_config(None, env, {"node_name": "n1"}).links.dial_addresses


def test_dial_overrides():
    assert dial({"PRESENCE_HA_LINK_DIAL": "n2=127.0.0.1:4000, n3=[::1]:5"}) == {
        "n2": ("127.0.0.1", 4000), "n3": ("::1", 5)}
    assert dial({}) == {}
    with pytest.raises(ConfigError) as info:
        dial({"PRESENCE_HA_LINK_DIAL": "n2=nowhere"})
    assert info.value.key == "links.dial"


async def test_location_cache_reads_once_then_forgets_on_ttl_and_moves():
    db = {"bob": "n2"}
    clock = [0.0]
    epoch = [0]

    async def load(user):
        return db.get(user)

    async def fingerprint():
        return epoch[0]

    cache = LocationCache(load, fingerprint, lambda: clock[0], ttl_s=10)
    assert await cache.active_node("bob") == "n2" and await cache.active_node("bob") == "n2"
    assert cache.reads == 1
    db["bob"] = "n3"
    assert await cache.active_node("bob") == "n2"  # cached
    assert await cache.refresh() is False  # first call only records the fingerprint
    epoch[0] += 1
    assert await cache.refresh() is True
    assert await cache.active_node("bob") == "n3" and cache.reads == 2
    db["bob"] = "n4"
    clock[0] = 11.0
    assert await cache.active_node("bob") == "n4"  # expired


async def test_location_cache_reloads_every_user_in_one_read_after_a_move():
    db = {"bob": "n1", "carol": "n1", "dave": None}
    epoch = [0]

    async def load(user):
        return db.get(user)

    async def load_all():
        return dict(db)

    async def fingerprint():
        return epoch[0]

    cache = LocationCache(load, fingerprint, lambda: 0.0, ttl_s=10, load_all=load_all)
    assert await cache.active_node("bob") == "n1" and cache.reads == 1
    await cache.refresh()  # the first also renews every entry (one bulk read)
    assert cache.reads == 2 and len(cache) == 3
    db.update(bob="n2", carol="n2")  # the backup took n1's users
    epoch[0] += 1
    assert await cache.refresh() is True
    assert cache.reads == 3 and len(cache) == 3  # one bulk read
    assert [await cache.active_node(u) for u in ("bob", "carol", "dave")] == ["n2", "n2", None]
    assert cache.reads == 3


async def test_inbox_keeps_order_per_key_and_survives_failures():
    inbox, seen = Inbox(), []
    gate = asyncio.Event()

    async def item(key, i, fail=False, wait=False):
        if wait:
            await gate.wait()
        if fail:
            raise RuntimeError("boom")
        seen.append((key, i))

    inbox.submit("a", lambda: item("a", 0, wait=True))
    for i in range(1, 4):
        inbox.submit("a", lambda i=i: item("a", i, fail=i == 2))
    inbox.submit("b", lambda: item("b", 0))
    await asyncio.sleep(0.01)
    assert seen == [("b", 0)]  # "b" is not held up by "a"
    gate.set()
    await inbox.drain(5)
    assert seen == [("b", 0), ("a", 0), ("a", 1), ("a", 3)] and inbox.failures == 1


async def test_inbox_items_run_in_a_task_of_their_own():
    """Work that needs its own task (asyncio.timeout, which asyncpg uses, cancels the
    task it was entered in) gets one, even when submitted outside any task (the link's
    frame callbacks run in a protocol's data_received)."""
    inbox, seen = Inbox(), []

    async def timed(i):
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        seen.append((i, asyncio.current_task()))

    async def broken():
        raise RuntimeError("boom")

    submitted: list = []
    asyncio.get_running_loop().call_soon(lambda: submitted.append(inbox.submit("a", lambda: timed(0), tracked=True)))
    await asyncio.sleep(0)
    assert seen == [] and not submitted[0].done()  # not run inside the callback
    await asyncio.wait_for(submitted[0], 1)
    assert seen[0][1] not in (None, asyncio.current_task())
    assert await asyncio.wait_for(inbox.submit("a", broken, tracked=True), 1) is None and inbox.failures == 1


async def test_inbox_carries_on_an_item_that_suspended_and_keeps_the_order():
    inbox, seen = Inbox(), []
    gate = asyncio.get_running_loop().create_future()

    async def slow():
        seen.append("slow started")
        seen.append(await gate)  # a future's result reaches the coroutine

    async def quick():
        seen.append("quick")

    done = inbox.submit("a", slow, tracked=True)
    queued = inbox.submit("a", quick, tracked=True)
    await asyncio.sleep(0.01)
    assert seen == ["slow started"] and not done.done() and not queued.done()
    gate.set_result("slow resumed")
    await asyncio.wait_for(queued, 1)
    assert done.done() and seen == ["slow started", "slow resumed", "quick"]


async def test_closing_the_inbox_cancels_a_suspended_item_inside_its_coroutine():
    inbox, cleaned = Inbox(), []

    async def stuck():
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    done = inbox.submit("a", stuck, tracked=True)
    await asyncio.sleep(0)
    await inbox.close()
    assert cleaned == [True] and done.cancelled()


async def test_location_lookups_that_miss_together_share_one_read():
    gate = asyncio.Event()
    calls = []

    async def load(user):
        calls.append(user)
        await gate.wait()
        return "n2"

    async def fingerprint():
        return 0

    cache = LocationCache(load, fingerprint, lambda: 0.0, ttl_s=10)
    lookups = [asyncio.ensure_future(cache.active_node("bob")) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*lookups) == ["n2"] * 5
    assert calls == ["bob"] and cache.reads == 1


async def test_lookups_during_a_bulk_reload_wait_for_it():
    db = {"bob": "n1", "carol": "n1"}
    gate = asyncio.Event()
    single = []

    async def load(user):
        single.append(user)
        return db.get(user)

    async def load_all():
        await gate.wait()
        return dict(db)

    async def fingerprint():
        return 0

    cache = LocationCache(load, fingerprint, lambda: 0.0, ttl_s=10, load_all=load_all)
    cache.forget_all()
    cache.reload_soon()
    lookups = [asyncio.ensure_future(cache.active_node(u)) for u in ("bob", "carol", "bob")]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*lookups) == ["n1", "n1", "n1"]
    assert single == [] and cache.reads == 1


async def test_a_bulk_read_begun_before_a_move_is_not_kept():
    db = {"bob": "n1"}
    gate = asyncio.Event()

    async def load(user):
        return db.get(user)

    async def load_all():
        snapshot = dict(db)  # read before the move commits...
        await gate.wait()
        return snapshot

    async def fingerprint():
        return 0

    cache = LocationCache(load, fingerprint, lambda: 0.0, ttl_s=10, load_all=load_all)
    stale = cache.reload_soon()
    await asyncio.sleep(0)
    db["bob"] = "n2"  # ...the takeover commits and a peer says so
    cache.forget_all()
    fresh = cache.reload_soon()
    assert fresh is not stale
    gate.set()
    await asyncio.gather(stale, fresh)
    assert await cache.active_node("bob") == "n2"


async def test_lookups_waiting_on_a_superseded_bulk_read_wait_for_the_newer_one():
    """A takeover forgets the cache more than once (the move, a peer's word, the
    fingerprint): lookups that waited on the first reload must not fall back to one
    read per user when it is discarded, but wait for the reload that replaced it."""
    db = {"bob": "n1", "carol": "n1"}
    gates = [asyncio.Event(), asyncio.Event()]
    single = []

    async def load(user):
        single.append(user)
        return db.get(user)

    async def load_all():
        gate = gates[len(bulk)]
        bulk.append(dict(db))
        await gate.wait()
        return dict(db)

    async def fingerprint():
        return 0

    bulk: list = []
    cache = LocationCache(load, fingerprint, lambda: 0.0, ttl_s=10, load_all=load_all)
    cache.forget_all()
    first = cache.reload_soon()
    lookups = [asyncio.ensure_future(cache.active_node(u)) for u in ("bob", "carol")]
    await asyncio.sleep(0)
    db["bob"] = "n2"
    cache.forget_all()  # e.g. the peers' MOVED: the first read is stale now
    second = cache.reload_soon()
    await asyncio.sleep(0)
    gates[0].set()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.sleep(0)
    assert not any(lookup.done() for lookup in lookups)  # still waiting, for the second read
    gates[1].set()
    assert await asyncio.gather(*lookups) == ["n2", "n1"]
    await second
    assert single == [] and len(bulk) == 2


async def test_refresh_renews_every_entry_in_one_read_before_they_expire():
    db = {"bob": "n1", "carol": "n2"}
    clock = [0.0]
    single = []

    async def load(user):
        single.append(user)
        return db.get(user)

    async def load_all():
        return dict(db)

    async def fingerprint():
        return 0

    cache = LocationCache(load, fingerprint, lambda: clock[0], ttl_s=10, load_all=load_all)
    await cache.refresh()  # first call: one bulk read
    assert cache.reads == 1
    for t in (3.0, 6.0, 9.0, 12.0, 15.0):
        clock[0] = t
        await cache.refresh()
        assert cache.cached("bob") == "n1" and cache.cached("carol") == "n2"
    assert single == [] and cache.reads == 3  # at 0, 6 and 12: once per ttl/2
