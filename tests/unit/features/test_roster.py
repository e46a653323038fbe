"""Roster get/set/remove and pushes as transcripts (RFC 6121 §2)."""

from __future__ import annotations

import pytest

from presence_ha.server.features import roster
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID
from tests.unit.features.transcript import parse

NS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
Q = "xmlns='jabber:iq:roster'"


def error(id_: str, to: str, condition: str, type_: str = "modify") -> str:
    return (f"<iq type='error' id='{id_}' to='{to}'><error type='{type_}'><{condition} xmlns='{NS_ERR}'/>"
            f"<text xmlns='{NS_ERR}'>*</text></error></iq>")


async def test_get_set_push_and_get_again(world):
    home = await world.connect("alice@example.test/home")
    phone = await world.connect("alice@example.test/phone")
    quiet = await world.connect("alice@example.test/quiet")  # never asks for the roster
    await home.send(f"<iq type='get' id='g1'><query {Q}/></iq>")
    home.expect(f"<iq type='result' id='g1' to='alice@example.test/home'><query {Q}/></iq>")
    await phone.send(f"<iq type='get' id='g2'><query {Q}/></iq>")
    phone.expect(f"<iq type='result' id='g2' to='alice@example.test/phone'><query {Q}/></iq>")
    await home.send(f"<iq type='set' id='s1'><query {Q}><item jid='Bob@Example.test' name='Bob'>"
                    "<group>Friends</group><group>Work</group></item></query></iq>")
    item = ("<item jid='bob@example.test' subscription='none' name='Bob'>"
            "<group>Friends</group><group>Work</group></item>")
    home.expect(f"<iq type='set' id='*' to='alice@example.test/home'><query {Q}>{item}</query></iq>")
    home.expect("<iq type='result' id='s1' to='alice@example.test/home'/>")
    phone.expect(f"<iq type='set' id='*' to='alice@example.test/phone'><query {Q}>{item}</query></iq>")
    quiet.silent()
    await home.send(f"<iq type='get' id='g3'><query {Q}/></iq>")
    home.expect(f"<iq type='result' id='g3' to='alice@example.test/home'><query {Q}>{item}</query></iq>")
    # an update keeps the subscription and replaces name and groups
    await home.send(f"<iq type='set' id='s2'><query {Q}><item jid='bob@example.test'/></query></iq>")
    home.expect(f"<iq type='set' id='*' to='alice@example.test/home'><query {Q}>"
                "<item jid='bob@example.test' subscription='none'/></query></iq>")
    home.expect("<iq type='result' id='s2' to='alice@example.test/home'/>")


@pytest.mark.parametrize(("payload", "condition"), [
    ("<item jid='a@example.test'/><item jid='b@example.test'/>", "bad-request"),
    ("", "bad-request"),
    ("<item name='no jid'/>", "bad-request"),
    ("<item jid='bob@example.test/res'/>", "bad-request"),
    ("<item jid='@example.test'/>", "jid-malformed"),
    ("<item jid='bob@example.test'><group>A</group><group>a</group></item>", "bad-request"),
    ("<item jid='bob@example.test'><group/></item>", "not-acceptable"),
    (f"<item jid='bob@example.test'><group>{'g' * 1024}</group></item>", "not-acceptable"),
    (f"<item jid='bob@example.test' name='{'n' * 1024}'/>", "not-acceptable"),
])
async def test_invalid_sets_are_refused_and_change_nothing(world, payload, condition):
    alice = await world.connect("alice@example.test/home")
    await alice.send(f"<iq type='set' id='x'><query {Q}>{payload}</query></iq>")
    alice.expect(error("x", "alice@example.test/home", condition))
    alice.silent()
    assert await world.store.roster(JID.parse("alice@example.test")) == []


async def test_remove_pushes_and_unknown_item_is_item_not_found(world):
    alice = await world.connect("alice@example.test/home")
    await alice.send(f"<iq type='get' id='g'><query {Q}/></iq>")
    await alice.send(f"<iq type='set' id='s'><query {Q}><item jid='carol@example.test'/></query></iq>")
    alice.outbox.clear()
    await alice.send(f"<iq type='set' id='r'><query {Q}>"
                     "<item jid='carol@example.test' subscription='remove'/></query></iq>")
    alice.expect(f"<iq type='set' id='*' to='alice@example.test/home'><query {Q}>"
                 "<item jid='carol@example.test' subscription='remove'/></query></iq>")
    alice.expect("<iq type='result' id='r' to='alice@example.test/home'/>")
    await alice.send(f"<iq type='set' id='r2'><query {Q}>"
                     "<item jid='carol@example.test' subscription='remove'/></query></iq>")
    alice.expect(error("r2", "alice@example.test/home", "item-not-found", "cancel"))


async def test_remove_cancels_subscriptions_both_ways(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    for a, b in ((alice, bob), (bob, alice)):
        await a.send(f"<presence type='subscribe' to='{b.jid.bare}'/>")
        await b.send(f"<presence type='subscribed' to='{a.jid.bare}'/>")
    alice.outbox.clear()
    bob.outbox.clear()
    await alice.send(f"<iq type='set' id='r'><query {Q}>"
                     "<item jid='bob@example.test' subscription='remove'/></query></iq>")
    alice.expect(f"<iq type='set' id='*' to='alice@example.test/home'><query {Q}>"
                 "<item jid='bob@example.test' subscription='remove'/></query></iq>")
    bob.expect(f"<iq type='set' id='*' to='bob@example.test/pc'><query {Q}>"
               "<item jid='alice@example.test' subscription='to'/></query></iq>")
    bob.expect("<presence type='unsubscribe' from='alice@example.test' to='bob@example.test'/>")
    bob.expect("<presence type='unavailable' from='alice@example.test/home' to='bob@example.test'/>")
    bob.expect(f"<iq type='set' id='*' to='bob@example.test/pc'><query {Q}>"
               "<item jid='alice@example.test' subscription='none'/></query></iq>")
    bob.expect("<presence type='unsubscribed' from='alice@example.test' to='bob@example.test'/>")
    bob.silent()
    # §3.3.3: bob's server sends bob's unavailable presence on the 'unsubscribe'
    alice.expect("<presence type='unavailable' from='bob@example.test/pc' to='alice@example.test'/>")
    alice.expect("<iq type='result' id='r' to='alice@example.test/home'/>")
    alice.silent()
    assert await world.store.roster(JID.parse("alice@example.test")) == []


async def test_foreign_roster_is_forbidden(world):
    alice = await world.connect("alice@example.test/home")
    with pytest.raises(StanzaError) as exc:
        await roster.roster_get(world.ctx, alice.session,
                                parse(f"<iq type='get' to='bob@example.test'><query {Q}/></iq>"))
    assert exc.value.condition is Condition.FORBIDDEN
    # through the router too: the server answers for bob's bare JID (RFC 6120 §10.5.3.2)
    await alice.send(f"<iq type='get' id='f' to='bob@example.test'><query {Q}/></iq>")
    alice.expect(f"<iq type='error' id='f' to='alice@example.test/home' from='bob@example.test'><error type='auth'>"
                 f"<forbidden xmlns='{NS_ERR}'/>"
                 f"<text xmlns='{NS_ERR}'>only your own roster can be read or changed</text></error></iq>")
