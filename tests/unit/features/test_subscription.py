"""Subscriptions through the router and the real store (RFC 6121 §3, Appendix A).

The Appendix A rows run end to end against a contact of another domain, so only the
user's side is processed: the stored state after the stanza, whether it was routed
(a remote contact answers with remote-server-not-found) or delivered, and whether the
roster was pushed. The handshakes between two local users follow as transcripts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from presence_ha.server.features.subscription_rules import STATES, TABLE, Way, decide
from presence_ha.server.store import SubscriptionState
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import Subscription

ALICE = JID.parse("alice@example.test")
BOB = JID.parse("bob@example.test")
REMOTE = JID.parse("zed@remote.example")
NS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"


def as_store_state(state) -> SubscriptionState:
    return SubscriptionState(state.sub, state.pending_out, state.pending_in)


def kinds(outbox: list[ET.Element]) -> list[str]:
    return [f"{s.tag}:{s.get('type')}" for s in outbox]


@pytest.mark.parametrize("key", list(TABLE), ids=lambda k: f"{k[0].value}-{k[1].value}-{k[2]}")
async def test_appendix_a_row_end_to_end(world, key):
    way, kind, state = key
    row = TABLE[key]
    await world.store.update_subscription(ALICE, REMOTE, lambda old: as_store_state(state))
    alice = await world.online("alice@example.test/home")
    if way is Way.OUTBOUND:
        await alice.send(f"<presence type='{kind.value}' to='{REMOTE}'/>")
    else:
        await world.ctx.deliver(ET.Element("presence", {"type": kind.value, "from": str(REMOTE), "to": str(ALICE)}))
    approved = decide(way, kind, state).approved  # pre-approval (§3.4) is beyond the table
    after = await world.store.subscription(ALICE, REMOTE)
    assert after == replace(as_store_state(row.to), approved=approved)
    got = kinds(alice.outbox)
    if way is Way.OUTBOUND:
        routed = [s for s in alice.outbox if s.find(f"error/{{{NS_ERR}}}remote-server-not-found") is not None]
        assert bool(routed) == row.route
    else:
        assert (f"presence:{kind.value}" in got) == row.route
    visible_change = (state.sub, state.pending_out, False) != (row.to.sub, row.to.pending_out, approved)
    assert ("iq:set" in got) == visible_change
    pending = await world.store.pending_requests(ALICE)
    assert bool(pending) == row.to.pending_in


async def test_request_handshake_between_two_local_users(world):
    alice = await world.online("alice@example.test/home", "<presence><status>hi</status></presence>")
    bob = await world.online("bob@example.test/pc")
    await alice.send("<presence type='subscribe' to='bob@example.test'/>")
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@example.test' subscription='none' ask='subscribe'/></query></iq>")
    bob.expect("<presence type='subscribe' from='alice@example.test' to='bob@example.test'/>")
    bob.silent()
    await bob.send("<presence type='subscribed' to='alice@example.test'/>")
    bob.expect("<iq type='set' id='*' to='bob@example.test/pc'><query xmlns='jabber:iq:roster'>"
               "<item jid='alice@example.test' subscription='from'/></query></iq>")
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@example.test' subscription='to'/></query></iq>")
    alice.expect("<presence type='subscribed' from='bob@example.test' to='alice@example.test'/>")
    alice.expect("<presence from='bob@example.test/pc' to='alice@example.test'/>")
    alice.silent()
    # and back: bob subscribes to alice, alice approves -> both
    await bob.send("<presence type='subscribe' to='alice@example.test'/>")
    bob.expect("<iq type='set' id='*' to='bob@example.test/pc'><query xmlns='jabber:iq:roster'>"
               "<item jid='alice@example.test' subscription='from' ask='subscribe'/></query></iq>")
    alice.expect("<presence type='subscribe' from='bob@example.test' to='alice@example.test'/>")
    await alice.send("<presence type='subscribed' to='bob@example.test'/>")
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@example.test' subscription='both'/></query></iq>")
    bob.expect("<iq type='set' id='*' to='bob@example.test/pc'><query xmlns='jabber:iq:roster'>"
               "<item jid='alice@example.test' subscription='both'/></query></iq>")
    bob.expect("<presence type='subscribed' from='alice@example.test' to='bob@example.test'/>")
    bob.expect("<presence from='alice@example.test/home' to='bob@example.test'><status>hi</status></presence>")
    assert (await world.store.subscription(ALICE, BOB)).subscription is Subscription.BOTH
    assert (await world.store.subscription(BOB, ALICE)).subscription is Subscription.BOTH


async def test_unsubscribe_ends_both_sides_and_sends_unavailable(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await alice.send("<presence type='subscribe' to='bob@example.test'/>")
    await bob.send("<presence type='subscribed' to='alice@example.test'/>")
    alice.outbox.clear()
    bob.outbox.clear()
    await alice.send("<presence type='unsubscribe' to='bob@example.test'/>")
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@example.test' subscription='none'/></query></iq>")
    bob.expect("<iq type='set' id='*' to='bob@example.test/pc'><query xmlns='jabber:iq:roster'>"
               "<item jid='alice@example.test' subscription='none'/></query></iq>")
    bob.expect("<presence type='unsubscribe' from='alice@example.test' to='bob@example.test'/>")
    alice.expect("<presence type='unavailable' from='bob@example.test/pc' to='alice@example.test'/>")
    alice.silent()
    bob.silent()


async def test_pending_request_is_redelivered_at_each_login_until_answered(world):
    alice = await world.online("alice@example.test/home")
    await alice.send("<presence type='subscribe' to='bob@example.test'><status>it is me</status></presence>")
    for _ in range(2):
        bob = await world.connect("bob@example.test/pc")
        await bob.send("<presence/>")
        bob.expect("<presence from='bob@example.test/pc' to='bob@example.test/pc'/>")  # §4.2.2 reflection
        bob.expect("<presence type='subscribe' from='alice@example.test' to='bob@example.test'>"
                   "<status>it is me</status></presence>")
        bob.silent()
        await bob.close()
    bob = await world.online("bob@example.test/pc")
    await bob.send("<presence type='unsubscribed' to='alice@example.test'/>")
    assert await world.store.pending_requests(BOB) == []
    assert (await world.store.subscription(ALICE, BOB)) == SubscriptionState()
    bob2 = await world.connect("bob@example.test/tablet")
    await bob2.send("<presence/>")
    bob2.expect("<presence from='bob@example.test/tablet' to='bob@example.test/tablet'/>")
    bob2.expect("<presence from='bob@example.test/pc' to='bob@example.test/tablet'/>")
    bob2.silent()


async def test_preapproval_grants_the_later_request(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await bob.send("<presence type='subscribed' to='alice@example.test'/>")
    bob.expect("<iq type='set' id='*' to='bob@example.test/pc'><query xmlns='jabber:iq:roster'>"
               "<item jid='alice@example.test' subscription='none' approved='true'/></query></iq>")
    bob.silent()
    alice.silent()
    await alice.send("<presence type='subscribe' to='bob@example.test'/>")
    bob.expect("<iq type='set' id='*' to='bob@example.test/pc'><query xmlns='jabber:iq:roster'>"
               "<item jid='alice@example.test' subscription='from'/></query></iq>")
    bob.silent()  # the request itself is never shown to bob
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@example.test' subscription='none' ask='subscribe'/></query></iq>")
    alice.expect("<iq type='set' id='*' to='alice@example.test/home'><query xmlns='jabber:iq:roster'>"
                 "<item jid='bob@example.test' subscription='to'/></query></iq>")
    alice.expect("<presence type='subscribed' from='bob@example.test' to='alice@example.test'/>")
    alice.expect("<presence from='bob@example.test/pc' to='alice@example.test'/>")


async def test_request_to_unknown_account_is_answered_unsubscribed_and_stores_nothing(world):
    """§3.1.3, and issue #19 item 7: no roster row or pending state for a made-up JID."""
    alice = await world.online("alice@example.test/home")
    for i in range(3):
        await alice.send(f"<presence type='subscribe' to='nobody{i}@example.test'/>")
        alice.expect(f"<presence type='unsubscribed' from='nobody{i}@example.test' to='alice@example.test'/>")
    await alice.send("<presence type='subscribed' to='nobody0@example.test'/>")  # a pre-approval: nothing either
    alice.silent()
    assert await world.store.roster(ALICE) == []


async def test_subscription_stanza_without_to_is_bad_request(world):
    alice = await world.online("alice@example.test/home")
    await alice.send("<presence type='subscribe' id='s1'/>")
    alice.expect("<presence type='error' id='s1' to='alice@example.test/home'><error type='modify'>"
                 f"<bad-request xmlns='{NS_ERR}'/><text xmlns='{NS_ERR}'>*</text></error></presence>")


def test_every_state_is_set_up_by_the_row_tests():
    assert {key[2] for key in TABLE} == set(STATES)
