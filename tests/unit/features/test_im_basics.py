"""Blocking, vCards, last activity, entity time, account disco and roster versioning as
transcripts (XEP-0191, XEP-0054, XEP-0012, XEP-0202, XEP-0030, RFC 6121 §2.6)."""

from __future__ import annotations

import base64

import pytest

from presence_ha.server.blocking import BlockingGuard
from presence_ha.server.features import (
    blocking,
    carbons,
    disco,
    entity_time,
    last_activity,
    message,
    presence,
    roster,
    subscription,
    vcard,
)
from presence_ha.server.sessions import SessionKind
from presence_ha.server.xmpp import caps
from presence_ha.server.xmpp.jid import JID
from tests.unit.features.helpers import befriend
from tests.unit.features.transcript import make_world, parse

NS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
B = "xmlns='urn:xmpp:blocking'"
V = "xmlns='vcard-temp'"
MODULES = (roster, subscription, presence, message, carbons, disco, blocking, vcard, last_activity, entity_time)


@pytest.fixture
async def world(tmp_path):
    w = await make_world(tmp_path / "im.sqlite3", modules=MODULES, guard=BlockingGuard())
    yield w
    assert w.ctx.metrics.handler_errors.value == 0, "a handler raised an unexpected exception"
    await w.close()


def error(stanza: str, id_: str, to: str, condition: str, type_: str, frm: str | None = None, extra: str = "") -> str:
    sender = f" from='{frm}'" if frm else ""
    return (f"<{stanza} type='error' id='{id_}' to='{to}'{sender}><error type='{type_}'>"
            f"<{condition} xmlns='{NS_ERR}'/>{extra}</error></{stanza}>")


async def test_block_pushes_hides_presence_and_stops_stanzas_both_ways(world):
    home = await world.online("alice@example.test/home")
    phone = await world.online("alice@example.test/phone")
    bob = await world.online("bob@example.test/pc")
    await befriend(world, home, bob)
    phone.outbox.clear()
    await home.send(f"<iq type='get' id='l1'><blocklist {B}/></iq>")
    home.expect(f"<iq type='result' id='l1' to='alice@example.test/home'><blocklist {B}/></iq>")

    await phone.send(f"<iq type='set' id='b1'><block {B}><item jid='Bob@example.test'/></block></iq>")
    home.expect(f"<iq type='set' id='*' to='alice@example.test/home'><block {B}>"
                "<item jid='bob@example.test'/></block></iq>")  # only the resource that asked
    phone.expect("<iq type='result' id='b1' to='alice@example.test/phone'/>")
    bob.expect_unordered(  # §3.3: bob, who saw alice, sees both resources go
        "<presence type='unavailable' from='alice@example.test/home' to='bob@example.test'/>",
        "<presence type='unavailable' from='alice@example.test/phone' to='bob@example.test'/>")

    await bob.send("<message id='m1' type='chat' to='alice@example.test'><body>hi</body></message>")
    bob.expect(error("message", "m1", "bob@example.test/pc", "service-unavailable", "cancel", "alice@example.test"))
    await bob.send("<presence/>")  # bob's broadcast: alice's resources hear nothing
    bob.expect("<presence from='bob@example.test/pc' to='bob@example.test/pc'/>")
    await home.send("<message id='m2' type='chat' to='bob@example.test'><body>x</body></message>")
    home.expect(error("message", "m2", "alice@example.test/home", "not-acceptable", "modify", "bob@example.test",
                      f"<text xmlns='{NS_ERR}'>*</text><blocked xmlns='urn:xmpp:blocking:errors'/>"))
    await home.send("<presence><show>away</show></presence>")  # not broadcast to bob
    bob.silent()
    phone.expect("<presence from='alice@example.test/home' to='alice@example.test/phone'><show>away</show></presence>")
    home.expect("<presence from='alice@example.test/home' to='alice@example.test/home'><show>away</show></presence>")
    phone.silent()
    home.silent()

    await home.send(f"<iq type='set' id='u1'><unblock {B}/></iq>")  # no items: everything
    home.expect(f"<iq type='set' id='*' to='alice@example.test/home'><unblock {B}/></iq>")
    home.expect("<presence from='bob@example.test/pc' to='alice@example.test/home'/>")  # the probe's answer
    home.expect("<iq type='result' id='u1' to='alice@example.test/home'/>")
    bob.expect_unordered(
        "<presence from='alice@example.test/home' to='bob@example.test'><show>away</show></presence>",
        "<presence from='alice@example.test/phone' to='bob@example.test'/>")
    phone.expect("<presence from='bob@example.test/pc' to='alice@example.test/phone'/>")
    await bob.send("<message id='m3' type='chat' to='alice@example.test/home'><body>again</body></message>")
    home.expect("<message id='m3' type='chat' to='alice@example.test/home' from='bob@example.test/pc'>"
                "<body>again</body><stanza-id xmlns='urn:xmpp:sid:0' by='alice@example.test' id='*'/></message>")


@pytest.mark.parametrize(("payload", "condition"), [
    (f"<block {B}/>", "bad-request"),
    (f"<block {B}><item jid='@x'/></block>", "jid-malformed"),
    (f"<block {B}><item/></block>", "jid-malformed"),
])
async def test_invalid_blocks_are_refused(world, payload, condition):
    alice = await world.connect("alice@example.test/home")
    await alice.send(f"<iq type='set' id='x'>{payload}</iq>")
    reply = alice.outbox.pop()
    assert reply.get("type") == "error" and reply.find(f"error/{{{NS_ERR}}}{condition}") is not None


async def test_a_domain_item_blocks_everyone_there_but_the_server(world):
    alice = await world.online("alice@example.test/home")
    carol = await world.online("carol@example.test/c")
    await alice.send(f"<iq type='set' id='b'><block {B}><item jid='example.test'/></block></iq>")
    alice.expect("<iq type='result' id='b' to='alice@example.test/home'/>")
    await carol.send("<iq type='get' id='v' to='alice@example.test/home'><query xmlns='jabber:iq:version'/></iq>")
    carol.expect(error("iq", "v", "carol@example.test/c", "service-unavailable", "cancel", "alice@example.test/home"))
    await alice.send("<iq type='get' id='t'><time xmlns='urn:xmpp:time'/></iq>")  # the server still answers
    assert alice.outbox.pop().get("type") == "result"


async def test_vcards_are_set_by_their_owner_and_read_by_anyone(world):
    alice = await world.connect("alice@example.test/home")
    bob = await world.connect("bob@example.test/pc")
    photo = base64.b64encode(b"\x89PNG...").decode()
    card = f"<vCard {V}><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{photo}</BINVAL></PHOTO></vCard>"
    await bob.send(f"<iq type='get' id='g0' to='alice@example.test'><vCard {V}/></iq>")
    bob.expect(f"<iq type='result' id='g0' to='bob@example.test/pc' from='alice@example.test'><vCard {V}/></iq>")
    await alice.send(f"<iq type='set' id='s1'>{card}</iq>")
    alice.expect("<iq type='result' id='s1' to='alice@example.test/home'/>")
    await bob.send(f"<iq type='get' id='g1' to='alice@example.test'><vCard {V}/></iq>")
    bob.expect(f"<iq type='result' id='g1' to='bob@example.test/pc' from='alice@example.test'>{card}</iq>")
    await alice.send(f"<iq type='get' id='g2'><vCard {V}/></iq>")
    alice.expect(f"<iq type='result' id='g2' to='alice@example.test/home'>{card}</iq>")
    await bob.send(f"<iq type='set' id='s2' to='alice@example.test'><vCard {V}><FN>Mallory</FN></vCard></iq>")
    # answered for alice's account by the server (RFC 6120 §10.5.3.2): only she sets it
    bob.expect(error("iq", "s2", "bob@example.test/pc", "forbidden", "auth", "alice@example.test",
                     f"<text xmlns='{NS_ERR}'>only your own vCard can be set</text>"))
    await alice.send(f"<iq type='set' id='s3'><vCard {V}><PHOTO><BINVAL>not base64!</BINVAL></PHOTO></vCard></iq>")
    assert alice.outbox.pop().find(f"error/{{{NS_ERR}}}bad-request") is not None
    await bob.send(f"<iq type='get' id='g3' to='nobody@example.test'><vCard {V}/></iq>")
    bob.expect(error("iq", "g3", "bob@example.test/pc", "service-unavailable", "cancel", "nobody@example.test"))


async def test_disco_on_a_bare_account_jid_and_on_the_server_caps_node(world):
    alice = await world.connect("alice@example.test/home")
    account = ("<query xmlns='http://jabber.org/protocol/disco#info'><identity category='account' type='registered'/>"
               "<feature var='http://jabber.org/protocol/disco#info'/>"
               "<feature var='http://jabber.org/protocol/disco#items'/>"
               "<feature var='jabber:iq:last'/><feature var='vcard-temp'/></query>")
    for id_, to in (("d1", "bob@example.test"), ("d2", "alice@example.test")):
        await alice.send(f"<iq type='get' id='{id_}' to='{to}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        alice.expect(f"<iq type='result' id='{id_}' to='alice@example.test/home' from='{to}'>{account}</iq>")
    await alice.send("<iq type='get' id='d3' to='nobody@example.test'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert alice.outbox.pop().find(f"error/{{{NS_ERR}}}service-unavailable") is not None
    node = disco.server_caps_node(world.ctx)
    await alice.send(f"<iq type='get' id='d4' to='example.test'>"
                     f"<query xmlns='http://jabber.org/protocol/disco#info' node='{node}'/></iq>")
    answer = alice.outbox.pop()[0]
    assert answer.get("node") == node
    identities = [caps.Identity(i.get("category"), i.get("type"), i.get("name") or "") for i in answer[:1]]
    features = [f.get("var") for f in answer[1:]]
    assert {"msgoffline", "urn:xmpp:blocking", "urn:xmpp:time"} <= set(features)
    assert node.endswith("#" + caps.ver(identities, features))
    await alice.send("<iq type='get' id='d5' to='example.test'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info' node='other'/></iq>")
    assert alice.outbox.pop().find(f"error/{{{NS_ERR}}}item-not-found") is not None


async def test_last_activity_is_told_to_contacts_only(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    carol = await world.online("carol@example.test/c")
    await befriend(world, alice, bob)
    query = "<query xmlns='jabber:iq:last'/>"
    await bob.send(f"<iq type='get' id='l0' to='alice@example.test'>{query}</iq>")
    bob.expect("<iq type='result' id='l0' to='bob@example.test/pc' from='alice@example.test'>"
               "<query xmlns='jabber:iq:last' seconds='0'/></iq>")  # online
    await alice.send("<presence type='unavailable'><status>off to lunch</status></presence>")
    bob.outbox.clear()
    await bob.send(f"<iq type='get' id='l1' to='alice@example.test'>{query}</iq>")
    bob.expect("<iq type='result' id='l1' to='bob@example.test/pc' from='alice@example.test'>"
               "<query xmlns='jabber:iq:last' seconds='*'>off to lunch</query></iq>")
    await carol.send(f"<iq type='get' id='l2' to='alice@example.test'>{query}</iq>")
    assert carol.outbox.pop().find(f"error/{{{NS_ERR}}}forbidden") is not None
    await carol.send(f"<iq type='get' id='l3' to='dave@example.test'>{query}</iq>")  # never logged out
    assert carol.outbox.pop().find(f"error/{{{NS_ERR}}}forbidden") is not None
    await carol.send(f"<iq type='get' id='l4' to='carol@example.test'>{query}</iq>")
    assert carol.outbox.pop().find("{jabber:iq:last}query").get("seconds") == "0"
    await carol.send(f"<iq type='get' id='l5' to='example.test'>{query}</iq>")  # the server's uptime
    assert int(carol.outbox.pop().find("{jabber:iq:last}query").get("seconds")) >= 0


async def test_roster_versions(world):
    alice = await world.connect("alice@example.test/home")
    plain = await world.connect("alice@example.test/plain")
    q = "xmlns='jabber:iq:roster'"
    await alice.send(f"<iq type='set' id='s'><query {q}><item jid='bob@example.test'/></query></iq>")
    alice.outbox.clear()
    await alice.send(f"<iq type='get' id='g1'><query {q} ver=''/></iq>")
    first = alice.expect(f"<iq type='result' id='g1' to='alice@example.test/home'><query {q} ver='*'>"
                         "<item jid='bob@example.test' subscription='none'/></query></iq>")[0].get("ver")
    await alice.send(f"<iq type='get' id='g2'><query {q} ver='{first}'/></iq>")
    alice.expect("<iq type='result' id='g2' to='alice@example.test/home'/>")  # §2.6.3: unchanged
    await plain.send(f"<iq type='get' id='p1'><query {q}/></iq>")  # no ver: no version
    plain.expect(f"<iq type='result' id='p1' to='alice@example.test/plain'><query {q}>"
                 "<item jid='bob@example.test' subscription='none'/></query></iq>")
    await plain.send(f"<iq type='set' id='s2'><query {q}><item jid='carol@example.test'/></query></iq>")
    push = alice.expect(f"<iq type='set' id='*' to='alice@example.test/home'><query {q} ver='*'>"
                        "<item jid='carol@example.test' subscription='none'/></query></iq>")[0].get("ver")
    plain.expect(f"<iq type='set' id='*' to='alice@example.test/plain'><query {q}>"
                 "<item jid='carol@example.test' subscription='none'/></query></iq>")
    assert push != first
    await alice.send(f"<iq type='get' id='g3'><query {q} ver='{push}'/></iq>")
    alice.expect("<iq type='result' id='g3' to='alice@example.test/home'/>")
    await alice.send(f"<iq type='get' id='g4'><query {q} ver='{first}'/></iq>")
    assert alice.outbox.pop()[0].get("ver") == push


async def test_a_blocked_contacts_subscription_request_is_not_kept_for_later(world):
    alice = await world.online("alice@example.test/home")
    await alice.send(f"<iq type='set' id='b'><block {B}><item jid='carol@example.test'/></block></iq>")
    alice.outbox.clear()
    await alice.close()
    carol = await world.online("carol@example.test/c")
    await carol.send("<presence type='subscribe' to='alice@example.test'/>")
    carol.expect("<iq type='set' id='*' to='carol@example.test/c'><query xmlns='jabber:iq:roster'>"
                 "<item jid='alice@example.test' subscription='none' ask='subscribe'/></query></iq>")
    carol.silent()  # alice's server drops it without an answer (§3.4)
    alice = await world.online("alice@example.test/home2", roster=False)
    assert await world.store.pending_requests(alice.jid) == []


async def test_the_routed_fast_path_asks_the_cached_list_only(world):
    alice = await world.online("alice@example.test/home")
    await alice.send(f"<iq type='set' id='b'><block {B}><item jid='bob@example.test'/></block></iq>")
    router, ctx, alice_jid = world.router, world.ctx, alice.jid.bare
    chat = parse("<message type='chat' from='bob@example.test/pc' to='alice@example.test'><body>x</body></message>")
    assert not router.admits_now(ctx, chat, alice_jid)  # blocked (or not known yet): the router's way
    await world.router.deliver(ctx, chat, route_remote=False)  # which reads the list once
    assert alice.session.blocked == frozenset({"bob@example.test"})
    assert not router.admits_now(ctx, chat, alice_jid)  # known and blocked
    chat.set("from", "carol@example.test/c")
    assert router.admits_now(ctx, chat, alice_jid)
    offline = parse("<presence from='bob@example.test/pc' to='dave@example.test'/>")
    assert router.admits_now(ctx, offline, JID.parse("dave@example.test"))  # reaches nobody: no list needed


async def test_a_backup_connection_cannot_change_the_block_list(world):
    backup = await world.connect("alice@example.test/backup", kind=SessionKind.INACTIVE)
    await backup.send(f"<iq type='set' id='b'><block {B}><item jid='bob@example.test'/></block></iq>")
    assert backup.outbox.pop().find(f"error/{{{NS_ERR}}}not-allowed") is not None
    assert await world.store.block_list(backup.jid) == []


async def test_sessions_keep_the_list_until_it_changes(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await alice.send("<message type='chat' to='bob@example.test'><body>1</body></message>")
    assert alice.session.blocked == frozenset() and bob.session.blocked == frozenset()  # read once, kept
    await alice.send(f"<iq type='set' id='b'><block {B}><item jid='bob@example.test'/></block></iq>")
    assert alice.session.blocked is None  # cleared by the change
    await bob.send("<message type='chat' to='alice@example.test'><body>2</body></message>")
    assert alice.session.blocked == frozenset({"bob@example.test"})


async def test_a_vcard_over_the_size_limit_is_refused(world):
    alice = await world.connect("alice@example.test/home")
    big = "x" * (vcard.MAX_VCARD_BYTES + 1)
    await alice.send(f"<iq type='set' id='s'><vCard {V}><NOTE>{big}</NOTE></vCard></iq>")
    assert alice.outbox.pop().find(f"error/{{{NS_ERR}}}not-acceptable") is not None
    assert await world.store.vcard(alice.jid) is None


async def test_entity_time_of_the_server(world):
    alice = await world.connect("alice@example.test/home")
    await alice.send("<iq type='get' id='t' to='example.test'><time xmlns='urn:xmpp:time'/></iq>")
    alice.expect("<iq type='result' id='t' to='alice@example.test/home' from='example.test'>"
                 "<time xmlns='urn:xmpp:time'><tzo>+00:00</tzo><utc>*</utc></time></iq>")
