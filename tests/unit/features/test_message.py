"""Message delivery rules (RFC 6121 §8.5) and offline storage as transcripts."""

from __future__ import annotations

from presence_ha.server.sessions import SessionKind
from presence_ha.server.xmpp.jid import JID

NS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"


def err(condition: str, to: str, type_: str = "cancel", text: bool = False, **attrs: str) -> str:
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    body = f"<text xmlns='{NS_ERR}'>*</text>" if text else ""
    return (f"<message type='error' to='{to}'{extra}><error type='{type_}'><{condition} xmlns='{NS_ERR}'/>"
            f"{body}</error></message>")

# every chat message to bob carries the id of his archive's copy (XEP-0313, XEP-0359)
BOB_SID = "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.test' id='*'/>"


async def test_bare_jid_goes_to_highest_non_negative_priority(world):
    alice = await world.online("alice@example.test/home")
    low = await world.online("bob@example.test/low", "<presence><priority>1</priority></presence>")
    high1 = await world.online("bob@example.test/high1", "<presence><priority>7</priority></presence>")
    high2 = await world.online("bob@example.test/high2", "<presence><priority>7</priority></presence>")
    for c in (low, high1, high2):
        c.outbox.clear()
    await alice.send("<message to='bob@example.test' type='chat' id='m1'><body>hi</body></message>")
    for c in (high1, high2):
        c.expect("<message to='bob@example.test' type='chat' id='m1' from='alice@example.test/home'>"
                 f"<body>hi</body>{BOB_SID}</message>")
    low.silent()
    await alice.send("<message to='bob@example.test' type='headline'><body>news</body></message>")
    for c in (low, high1, high2):
        c.expect("<message to='bob@example.test' type='headline' from='alice@example.test/home'>"
                 "<body>news</body></message>")
    await alice.send("<message to='bob@example.test/low' type='chat'><body>you</body></message>")
    low.expect("<message to='bob@example.test/low' type='chat' from='alice@example.test/home'>"
               f"<body>you</body>{BOB_SID}</message>")
    high1.silent()


async def test_full_jid_without_resource(world):
    alice = await world.online("alice@example.test/home")
    bob = await world.online("bob@example.test/pc")
    await alice.send("<message to='bob@example.test/gone' type='chat'><body>a</body></message>")
    bob.expect("<message to='bob@example.test/gone' type='chat' from='alice@example.test/home'>"
               f"<body>a</body>{BOB_SID}</message>")
    await alice.send("<message to='bob@example.test/gone' type='headline'><body>b</body></message>")
    await alice.send("<message to='bob@example.test/gone' type='groupchat' id='g'><body>c</body></message>")
    bob.silent()
    alice.expect(err("service-unavailable", "alice@example.test/home", text=True, id="g",
                     **{"from": "bob@example.test/gone"}))


async def test_unknown_user_and_groupchat_are_service_unavailable(world):
    alice = await world.online("alice@example.test/home")
    await alice.send("<message to='nobody@example.test' id='u'><body>x</body></message>")
    alice.expect(err("service-unavailable", "alice@example.test/home", id="u", **{"from": "nobody@example.test"}))
    await alice.send("<message to='bob@example.test' type='groupchat' id='g'><body>x</body></message>")
    alice.expect(err("service-unavailable", "alice@example.test/home", text=True, id="g",
                     **{"from": "bob@example.test"}))
    await alice.send("<message to='nobody@example.test' type='error' id='e'/>")
    alice.silent()


async def test_offline_storage_delay_cap_and_delivery(world):
    alice = await world.online("alice@example.test/home")
    negative = await world.online("bob@example.test/neg", "<presence><priority>-1</priority></presence>")
    backup = await world.connect("bob@example.test/backup", kind=SessionKind.INACTIVE)
    for i in range(3):  # the world's cap is 3
        await alice.send(f"<message to='bob@example.test' type='chat' id='o{i}'><body>m{i}</body></message>")
    await alice.send("<message to='bob@example.test' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await alice.send("<message to='bob@example.test' type='headline'><body>not stored</body></message>")
    alice.silent()
    await alice.send("<message to='bob@example.test' type='chat' id='full'><body>too many</body></message>")
    alice.expect(err("service-unavailable", "alice@example.test/home", text=True, id="full",
                     **{"from": "bob@example.test"}))
    negative.silent()
    backup.silent()
    bob = await world.connect("bob@example.test/pc")
    await bob.send("<presence/>")
    bob.expect("<presence from='bob@example.test/pc' to='bob@example.test/pc'/>")
    bob.expect("<presence from='bob@example.test/neg' to='bob@example.test/pc'><priority>-1</priority></presence>")
    for i in range(3):
        got = bob.expect(f"<message to='bob@example.test' type='chat' id='o{i}' from='alice@example.test/home'>"
                         f"<body>m{i}</body>{BOB_SID}<delay xmlns='urn:xmpp:delay' from='example.test' stamp='*'>"
                         "Offline Storage</delay></message>")
        assert got.find("{urn:xmpp:delay}delay").get("stamp").endswith("Z")
    bob.silent()
    assert await world.store.pop_offline(JID.parse("bob@example.test")) == []


async def test_inactive_session_never_gets_messages(world):
    alice = await world.online("alice@example.test/home")
    backup = await world.connect("bob@example.test/backup", kind=SessionKind.INACTIVE)
    await alice.send("<message to='bob@example.test/backup' type='chat'><body>x</body></message>")
    await alice.send("<message to='bob@example.test/backup' type='normal'><body>y</body></message>")
    backup.silent()
    assert len(await world.store.pop_offline(JID.parse("bob@example.test"))) == 2


async def test_message_without_to_goes_to_own_account(world):
    home = await world.online("alice@example.test/home")
    await home.send("<message type='chat'><body>note</body></message>")
    home.expect("<message type='chat' to='alice@example.test' from='alice@example.test/home'>"
                "<body>note</body></message>")
