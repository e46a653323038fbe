"""Per-account quotas (server.quotas) through the router and the real store, as transcripts:
what each limit answers, that nothing is stored beyond it, and that room comes back."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.config import QuotasConfig
from presence_ha.server.xmpp.jid import JID
from tests.unit.features.transcript import make_world

ALICE, BOB = JID.parse("alice@example.test"), JID.parse("bob@example.test")
NS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
QUOTAS = QuotasConfig(roster_max_items=3, roster_item_max_bytes=40, max_pending_subscriptions=2,
                      offline_max_messages=50, offline_max_bytes=2000)


@pytest.fixture
async def world(tmp_path):
    w = await make_world(tmp_path / "quotas.sqlite3", quotas=QUOTAS)
    yield w
    assert w.ctx.metrics.handler_errors.value == 0, "a handler raised an unexpected exception"
    await w.close()


def error_of(stanza: ET.Element) -> tuple[str, str, str]:
    """(type of the stanza, error type, condition) of an error stanza."""
    assert stanza.get("type") == "error", ET.tostring(stanza)
    error = stanza.find("error")
    condition = next(child.tag.split("}")[1] for child in error if child.tag != f"{{{NS_ERR}}}text")
    return stanza.tag, error.get("type"), condition


def roster_set(jid: str, id: str, name: str = "", groups: tuple[str, ...] = ()) -> str:
    named = f" name='{name}'" if name else ""
    return (f"<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='{jid}'{named}>"
            + "".join(f"<group>{g}</group>" for g in groups) + "</item></query></iq>")


async def test_a_full_roster_refuses_new_items_with_not_allowed_but_updates_and_removes(world):
    alice = await world.online("alice@example.test/home")
    for i in range(3):
        await alice.send(roster_set(f"c{i}@elsewhere.example", f"r{i}"))
    alice.outbox.clear()
    await alice.send(roster_set("c3@elsewhere.example", "over"))
    (answer,) = alice.outbox
    assert answer.get("id") == "over" and error_of(answer) == ("iq", "cancel", "not-allowed")
    assert "roster is full (3 items)" in answer.find(f"error/{{{NS_ERR}}}text").text
    alice.outbox.clear()
    await alice.send(roster_set("c0@elsewhere.example", "upd", name="Renamed"))  # an update needs no room
    assert [s.get("type") for s in alice.outbox if s.get("id") == "upd"] == ["result"]
    await alice.send("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'>"
                     "<item jid='c1@elsewhere.example' subscription='remove'/></query></iq>")
    await alice.send(roster_set("c3@elsewhere.example", "again"))
    assert [s.get("type") for s in alice.outbox if s.get("id") == "again"] == ["result"]
    assert len(await world.store.roster(ALICE)) == 3


async def test_an_item_whose_name_and_groups_are_too_big_is_not_acceptable(world):
    alice = await world.online("alice@example.test/home")
    await alice.send(roster_set("c@elsewhere.example", "big", name="n" * 20, groups=("g" * 11, "h" * 10)))
    (answer,) = alice.outbox
    assert error_of(answer) == ("iq", "modify", "not-acceptable")
    alice.outbox.clear()
    await alice.send(roster_set("c@elsewhere.example", "fits", name="n" * 20, groups=("g" * 10, "h" * 10)))
    assert [s.get("type") for s in alice.outbox if s.get("id") == "fits"] == ["result"]
    await alice.send(roster_set("c@elsewhere.example", "utf8", name="é" * 21))  # 42 bytes in UTF-8
    assert [error_of(s) for s in alice.outbox if s.get("id") == "utf8"] == [("iq", "modify", "not-acceptable")]


async def test_a_subscription_that_needs_a_new_item_on_a_full_roster_bounces_not_allowed(world):
    alice = await world.online("alice@example.test/home")
    for i in range(3):
        await alice.send(roster_set(f"c{i}@elsewhere.example", f"r{i}"))
    alice.outbox.clear()
    await alice.send("<presence type='subscribe' to='bob@example.test' id='s1'/>")
    (answer,) = alice.outbox
    assert error_of(answer) == ("presence", "cancel", "not-allowed") and answer.get("from") == "bob@example.test"
    assert not await world.store.pending_requests(BOB)  # nothing reached bob's side either
    assert await world.store.roster_item(ALICE, BOB) is None


async def test_too_many_unanswered_requests_bounce_resource_constraint_to_the_requester(world):
    bob = await world.online("bob@example.test/pc")
    senders = [await world.online(f"{name}@example.test/x") for name in ("alice", "carol", "dave")]
    for sender in senders:
        await sender.send("<presence type='subscribe' to='bob@example.test'/>")
    assert [s.get("from") for s in bob.outbox if s.tag == "presence"] == ["alice@example.test", "carol@example.test"]
    errors = [error_of(s) for s in senders[2].outbox if s.get("type") == "error"]
    assert errors == [("presence", "wait", "resource-constraint")]
    assert len(await world.store.pending_requests(BOB)) == 2
    await bob.send("<presence type='subscribed' to='alice@example.test'/>")  # answering one makes room
    await senders[2].send("<presence type='subscribe' to='bob@example.test'/>")
    assert len(await world.store.pending_requests(BOB)) == 2


async def test_a_huge_request_is_kept_without_its_payload(world):
    alice = await world.online("alice@example.test/home")
    await alice.send(f"<presence type='subscribe' to='bob@example.test'><status>{'x' * 10_000}</status></presence>")
    (kept,) = await world.store.pending_requests(BOB)
    assert kept.get("type") == "subscribe" and kept.get("from") == "alice@example.test" and len(kept) == 0


async def test_offline_storage_stops_at_its_byte_quota(world):
    alice = await world.online("alice@example.test/home")
    body = "b" * 700  # with its envelope and delay stamp ~950 bytes: two fit in 2,000
    for i in range(3):
        await alice.send(f"<message to='bob@example.test' type='chat' id='m{i}'><body>{body}</body></message>")
    errors = [(s.get("id"), error_of(s)) for s in alice.outbox]
    assert errors == [("m2", ("message", "cancel", "service-unavailable"))]
    assert len(await world.store.pop_offline(BOB)) == 2
    alice.outbox.clear()
    await alice.send(f"<message to='bob@example.test' type='chat' id='m3'><body>{body}</body></message>")
    alice.silent()  # taken: room again
