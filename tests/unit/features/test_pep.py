"""Transcripts of PEP (XEP-0163): publish, notify by caps, read by access model, disco."""

from __future__ import annotations

from tests.unit.features.helpers import befriend

PUBSUB, EVENT = "http://jabber.org/protocol/pubsub", "http://jabber.org/protocol/pubsub#event"
NS_ERR, CAPS = "urn:ietf:params:xml:ns:xmpp-stanzas", "http://jabber.org/protocol/caps"
NODE = "urn:xmpp:avatar:metadata"


def publish(item_id: str, options: str = "") -> str:
    return (f"<iq type='set' id='pub'><pubsub xmlns='{PUBSUB}'><publish node='{NODE}'><item id='{item_id}'>"
            f"<metadata xmlns='{NODE}'/></item></publish>{options}</pubsub></iq>")


def items(owner: str) -> str:
    return f"<iq type='get' id='get' to='{owner}'><pubsub xmlns='{PUBSUB}'><items node='{NODE}'/></pubsub></iq>"


async def test_publish_notifies_contacts_who_want_it(world):
    await world.store.pep.put_caps("sha-1:wants=", [f"{NODE}+notify", NODE])  # learned earlier
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await befriend(world, alice, bob)
    await bob.send(f"<presence><c xmlns='{CAPS}' hash='sha-1' node='n' ver='wants='/></presence>")
    bob_plain = await world.online("bob@example.test/old")  # no caps: no notifications
    carol = await world.online("carol@example.test/x")
    for c in (alice, bob, bob_plain, carol):
        c.outbox.clear()
    await alice.send(publish("v1"))
    answer = alice.outbox.pop()
    assert answer.get("type") == "result" and answer.find(f".//{{{PUBSUB}}}item").get("id") == "v1"
    (event,) = [m for m in bob.outbox if m.tag == "message"]
    assert event.get("from") == "alice@example.test" and event.get("to") == "bob@example.test/pc"
    assert event.find(f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}item").get("id") == "v1"
    assert not [m for m in bob_plain.outbox + carol.outbox if m.tag == "message"]

    await bob.send(items("alice@example.test"))
    assert bob.outbox.pop().find(f".//{{{PUBSUB}}}item").get("id") == "v1"
    await carol.send(items("alice@example.test"))  # presence access model, no subscription
    refused = carol.outbox.pop()
    assert refused.find(f"error/{{{NS_ERR}}}not-authorized") is not None
    assert refused.find("error/{http://jabber.org/protocol/pubsub#errors}presence-subscription-required") is not None


async def test_only_the_owner_publishes_and_preconditions_hold(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await bob.send(publish("x").replace("<iq type='set' id='pub'>", "<iq type='set' id='pub' to='alice@example.test'>"))
    assert bob.outbox.pop().find(f"error/{{{NS_ERR}}}forbidden") is not None
    form = ("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>"
            "http://jabber.org/protocol/pubsub#publish-options</value></field><field var='pubsub#access_model'>"
            "<value>{}</value></field></x></publish-options>")
    await alice.send(publish("1", form.format("open")))
    assert alice.outbox.pop().get("type") == "result"
    await bob.send(items("alice@example.test"))  # open: anyone reads
    assert bob.outbox.pop().get("type") == "result"
    await alice.send(publish("2", form.format("whitelist")))
    conflict = alice.outbox.pop()
    assert conflict.find(f"error/{{{NS_ERR}}}conflict") is not None
    assert conflict.find("error/{http://jabber.org/protocol/pubsub#errors}precondition-not-met") is not None
    await bob.send(items("nobody@example.test"))
    assert bob.outbox.pop().find(f"error/{{{NS_ERR}}}service-unavailable") is not None


async def test_disco_on_the_account_shows_pep(world):
    alice = await world.online("alice@example.test/home")
    await alice.send("<iq type='get' id='d' to='bob@example.test'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    info = alice.outbox.pop()
    identities = [(i.get("category"), i.get("type"))
                  for i in info.iter("{http://jabber.org/protocol/disco#info}identity")]
    features = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert ("pubsub", "pep") in identities
    assert {"urn:xmpp:mam:2", f"{PUBSUB}#publish-options", f"{PUBSUB}#access-open"} <= features
