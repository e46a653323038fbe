"""Presence as transcripts: initial presence, probes, updates, directed, disconnect."""

from __future__ import annotations

import asyncio

from presence_ha.server import activation, presence_service
from presence_ha.server.sessions import SessionKind
from presence_ha.server.store import SubscriptionState
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import Subscription
from tests.unit.features.helpers import befriend
from tests.unit.features.transcript import parse

NS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
ALICE = JID.parse("alice@example.test")
BOB = JID.parse("bob@example.test")


async def test_initial_presence_broadcasts_probes_and_records(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc", "<presence><show>away</show></presence>")
    await befriend(world, alice, bob)
    await alice.close()
    bob.expect("<presence type='unavailable' from='alice@example.test/home' to='bob@example.test'/>")
    assert await world.store.presences(ALICE) == []
    alice = await world.connect("alice@example.test/laptop")
    await alice.send("<presence><priority>5</priority><status>back</status></presence>")
    bob.expect("<presence from='alice@example.test/laptop' to='bob@example.test'>"
               "<priority>5</priority><status>back</status></presence>")
    bob.silent()
    alice.expect("<presence from='alice@example.test/laptop' to='alice@example.test/laptop'>"
                 "<priority>5</priority><status>back</status></presence>")
    alice.expect("<presence from='bob@example.test/pc' to='alice@example.test/laptop'><show>away</show></presence>")
    alice.silent()
    [record] = await world.store.presences(ALICE)
    assert (record.resource, record.priority, record.stanza.findtext("status")) == ("laptop", 5, "back")


async def test_updates_go_to_subscribers_only_and_unavailable_deletes_the_record(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    carol = await world.online("carol@example.test/x")
    await befriend(world, alice, bob)
    await alice.send("<presence><show>dnd</show></presence>")
    bob.expect("<presence from='alice@example.test/home' to='bob@example.test'><show>dnd</show></presence>")
    alice.expect("<presence from='alice@example.test/home' to='alice@example.test/home'><show>dnd</show></presence>")
    carol.silent()
    await alice.send("<presence type='unavailable'><status>bye</status></presence>")
    bob.expect("<presence type='unavailable' from='alice@example.test/home' to='bob@example.test'>"
               "<status>bye</status></presence>")
    alice.silent()
    carol.silent()
    assert await world.store.presences(ALICE) == []
    assert not alice.session.available


async def test_invalid_priority_is_bad_request(world):
    alice = await world.connect("alice@example.test/home")
    for bad in ("x", "128", "-129"):
        await alice.send(f"<presence id='p'><priority>{bad}</priority></presence>")
        alice.expect(f"<presence type='error' id='p' to='alice@example.test/home'><error type='modify'>"
                     f"<bad-request xmlns='{NS_ERR}'/><text xmlns='{NS_ERR}'>*</text></error></presence>")
    assert not alice.session.available


async def test_probe_is_answered_from_shared_records_for_users_of_other_nodes(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await befriend(world, alice, bob)
    await bob.close()
    alice.outbox.clear()
    # bob is now served by another node, which wrote his record in the shared database
    await world.store.put_presence(JID.parse("bob@example.test/far"), 1, parse("<presence><show>xa</show></presence>"))
    alice2 = await world.connect("alice@example.test/second")
    await alice2.send("<presence/>")
    alice2.expect("<presence from='alice@example.test/second' to='alice@example.test/second'/>")
    alice2.expect("<presence from='bob@example.test/far' to='alice@example.test/second'><show>xa</show></presence>")
    alice2.expect("<presence from='alice@example.test/home' to='alice@example.test/second'/>")
    alice2.silent()
    alice.expect("<presence from='alice@example.test/second' to='alice@example.test/home'/>")


async def test_probe_without_subscription_gets_unsubscribed(world):
    """§4.3.2: the refusal also repairs a subscription only the prober believes in."""
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc", "<presence><show>away</show></presence>")
    await world.store.update_subscription(ALICE, BOB, lambda old: SubscriptionState(Subscription.TO))
    await world.ctx.deliver(parse("<presence type='probe' from='alice@example.test/home' to='bob@example.test'/>"))
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@example.test' subscription='none'/></query></iq>")
    alice.expect("<presence type='unsubscribed' from='bob@example.test' to='alice@example.test'/>")
    alice.silent()  # and no presence of bob leaked
    await world.store.update_subscription(ALICE, JID.parse("nobody@example.test"),
                                          lambda old: SubscriptionState(Subscription.TO))
    await world.ctx.deliver(parse("<presence type='probe' from='alice@example.test/home' to='nobody@example.test'/>"))
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='nobody@example.test' subscription='none'/></query></iq>")
    alice.expect("<presence type='unsubscribed' from='nobody@example.test' to='alice@example.test'/>")
    bob.silent()


async def test_directed_presence_is_tracked_and_ended_on_disconnect(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await alice.send("<presence to='bob@example.test/pc'><status>psst</status></presence>")
    bob.expect("<presence to='bob@example.test/pc' from='alice@example.test/home'><status>psst</status></presence>")
    assert alice.session.directed_to == {"bob@example.test/pc"}
    await alice.send("<presence><show>chat</show></presence>")
    bob.silent()  # §4.6.3: later broadcasts do not go to directed-presence targets
    await alice.close()
    bob.expect("<presence type='unavailable' from='alice@example.test/home' to='bob@example.test/pc'/>")
    bob.silent()


async def test_presence_to_unknown_resource_is_dropped_and_bare_reaches_all(world):
    alice = await world.online("alice@example.test/home")
    bob1 = await world.online("bob@example.test/one")
    bob2 = await world.online("bob@example.test/two")
    bob1.outbox.clear()
    await alice.send("<presence to='bob@example.test/none'/>")
    await alice.send("<presence to='bob@example.test'/>")
    bob1.expect("<presence to='bob@example.test' from='alice@example.test/home'/>")
    bob2.expect("<presence to='bob@example.test' from='alice@example.test/home'/>")
    bob1.silent()
    bob2.silent()


async def test_inactive_sessions_show_and_get_no_presence(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await befriend(world, alice, bob)
    backup = await world.connect("bob@example.test/backup", kind=SessionKind.INACTIVE)
    await backup.send("<presence/>")
    assert not backup.session.available
    alice.silent()
    bob.silent()
    await alice.send("<presence><show>away</show></presence>")
    await alice.send("<presence to='bob@example.test/backup'/>")
    bob.expect("<presence from='alice@example.test/home' to='bob@example.test'><show>away</show></presence>")
    backup.silent()
    await backup.close()
    alice.outbox.clear()
    await alice.send("<presence/>")
    assert [s.get("from") for s in alice.outbox] == ["alice@example.test/home"]


async def test_a_subscription_change_reaches_the_cached_contacts_at_once(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await befriend(world, alice, bob)
    await alice.send("<presence><show>away</show></presence>")  # caches alice's contacts
    bob.expect("<presence from='alice@example.test/home' to='bob@example.test'><show>away</show></presence>")
    await bob.send("<presence type='unsubscribe' to='alice@example.test'/>")  # alice's roster: from -> none
    bob.outbox.clear()
    await alice.send("<presence><show>dnd</show></presence>")
    bob.silent()


async def test_concurrent_broadcasts_share_one_record_transaction(world):
    clients = [await world.connect(f"{name}@example.test/r") for name in ("alice", "bob", "carol")]
    before = world.store._presence_writes.batches
    await asyncio.gather(*(c.send("<presence><status>hi</status></presence>") for c in clients))
    assert world.store._presence_writes.batches - before <= 2
    for name in ("alice", "bob", "carol"):
        [record] = await world.store.presences(JID.parse(f"{name}@example.test"))
        assert (record.resource, record.stanza.findtext("status")) == ("r", "hi")


async def test_an_activated_session_that_keeps_its_contacts_is_not_sent_their_presence_again(world):
    """Backup protocol §4: `<hold contacts='kept'/>`; without it, an activation probes."""
    from presence_ha.server.features import inactive_session

    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc", "<presence><show>away</show></presence>")
    await befriend(world, alice, bob)
    inactive_session.register(world.router)
    for hold, bob_seen in (("<hold xmlns='urn:presence-ha:backup:0'/>", True),
                           ("<hold xmlns='urn:presence-ha:backup:0' contacts='kept'/>", False)):
        world.sessions.remove(alice.session)  # its node died: no unavailable, the record stays
        backup = await world.connect("alice@example.test/home", kind=SessionKind.INACTIVE)
        await backup.send(f"<iq type='set' id='h1'>{hold}</iq>")
        backup.expect("<iq type='result' id='h1' to='alice@example.test/home'/>")
        record = await world.store.presences_of({"alice"})
        assert activation.turn_active(backup.session, record.get(("alice", "home")))
        await presence_service.announce_resumed(world.ctx, backup.session)
        froms = [s.get("from") for s in backup.outbox if s.tag == "presence"]
        assert ("bob@example.test/pc" in froms) is bob_seen, froms
        bob.outbox.clear()
        alice = backup


async def test_activating_a_session_the_takeover_activated_already_reads_nothing(world, monkeypatch):
    """After a takeover every client may ask at once, its next stanzas queued behind
    the answer: a session already active is answered from memory."""
    from presence_ha.server.features import inactive_session

    inactive_session.register(world.router)
    alice = await world.online("alice@example.test/home")

    async def no_read(*_args):
        raise AssertionError("no database read expected")

    monkeypatch.setattr(world.store, "nodes_of", no_read)
    monkeypatch.setattr(world.store, "presences_of", no_read)
    await alice.send("<iq type='set' id='a1'><activate xmlns='urn:presence-ha:backup:0'/></iq>")
    alice.expect("<iq type='result' id='a1' to='alice@example.test/home'>"
                 "<activated xmlns='urn:presence-ha:backup:0' presence='restored' reason='client'/></iq>")
