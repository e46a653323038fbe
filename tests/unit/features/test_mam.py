"""Transcripts of the message archive (XEP-0313) and stanza ids (XEP-0359)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tests.unit.features.helpers import befriend

MAM, RSM, SID = "urn:xmpp:mam:2", "http://jabber.org/protocol/rsm", "urn:xmpp:sid:0"
NS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"


async def query(client, body: str = "", to: str = "") -> tuple[list[ET.Element], ET.Element]:
    """The <result/> messages and the IQ answer of one query."""
    address = f" to='{to}'" if to else ""
    await client.send(f"<iq type='set' id='q'{address}><query xmlns='{MAM}' queryid='f'>{body}</query></iq>")
    *results, answer = client.outbox
    client.outbox.clear()
    return results, answer


def bodies(results: list[ET.Element]) -> list[str]:
    return [r.find(f".//{{{MAM}}}result//body").text for r in results]


async def test_both_sides_are_archived_with_the_delivered_id(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    forged = f"<stanza-id xmlns='{SID}' by='bob@example.test' id='forged'/>"
    await alice.send(f"<message to='bob@example.test' type='chat' id='1'><body>hi</body>{forged}</message>")
    (got,) = bob.outbox
    ids = [s.get("id") for s in got.findall(f"{{{SID}}}stanza-id")]
    assert len(ids) == 1 and ids[0] != "forged"  # the client's claim is removed (XEP-0359 §5)
    bob.outbox.clear()
    await bob.send("<message to='alice@example.test' type='chat'><body>hello</body></message>")
    results, answer = await query(bob)
    assert bodies(results) == ["hi", "hello"]
    assert results[0].find(f"{{{MAM}}}result").get("id") == ids[0]
    assert results[0].find(f"{{{MAM}}}result").get("queryid") == "f"
    assert answer.find(f"{{{MAM}}}fin").get("complete") == "true"
    alice.outbox.clear()
    results, _ = await query(alice, f"<set xmlns='{RSM}'><max>1</max><before/></set>")
    assert bodies(results) == ["hello"]


async def test_preferences_never_and_roster(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await bob.send(f"<iq type='set' id='p'><prefs xmlns='{MAM}' default='roster'/></iq>")
    bob.outbox.clear()
    await alice.send("<message to='bob@example.test' type='chat'><body>stranger</body></message>")
    assert bob.outbox[0].find(f"{{{SID}}}stanza-id") is None  # not archived for bob: no id
    await befriend(world, alice, bob)
    await alice.send("<message to='bob@example.test' type='chat'><body>friend</body></message>")
    assert bob.outbox[0].find(f"{{{SID}}}stanza-id") is not None
    bob.outbox.clear()
    assert bodies((await query(bob))[0]) == ["friend"]
    assert bodies((await query(alice))[0]) == ["stranger", "friend"]  # alice archives always


async def test_refusals(world):
    alice = await world.online("alice@example.test/home")
    _, answer = await query(alice, to="bob@example.test")
    assert answer.find(f"error/{{{NS_ERR}}}forbidden") is not None
    _, answer = await query(alice, f"<set xmlns='{RSM}'><after>nope</after></set>")
    assert answer.find(f"error/{{{NS_ERR}}}item-not-found") is not None
    _, answer = await query(alice, "<x xmlns='jabber:x:data' type='submit'><field var='start'><value>soon</value>"
                                   "</field></x>")
    assert answer.find(f"error/{{{NS_ERR}}}bad-request") is not None
    await alice.send(f"<iq type='set' id='p'><prefs xmlns='{MAM}' default='sometimes'/></iq>")
    assert alice.outbox.pop().find(f"error/{{{NS_ERR}}}bad-request") is not None


async def test_a_database_away_costs_the_archive_not_the_message(world, monkeypatch):
    from presence_ha.db.engine import DatabaseUnavailable

    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")

    async def away(rows):
        raise DatabaseUnavailable("promotion in progress")

    monkeypatch.setattr(world.store.archive, "append", away)
    await alice.send("<message to='bob@example.test' type='chat'><body>still here</body></message>")
    (got,) = bob.outbox
    assert got.findtext("body") == "still here"
    assert got.find(f"{{{SID}}}stanza-id") is None  # it would name no archived message
