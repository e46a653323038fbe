"""Message Carbons (XEP-0280) as transcripts."""

from __future__ import annotations

CARBONS = "urn:xmpp:carbons:2"
FWD = "urn:xmpp:forward:0"

# every chat message to bob carries the id of his archive's copy (XEP-0313, XEP-0359)
BOB_SID = "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.test' id='*'/>"


async def enable(client) -> None:
    await client.send(f"<iq type='set' id='c'><enable xmlns='{CARBONS}'/></iq>")
    client.expect(f"<iq type='result' id='c' to='{client.jid}'/>")


async def test_feature_advertised(world):
    assert CARBONS in world.router.disco_features


async def test_received_and_sent_copies(world):
    alice = await world.online("alice@example.test/home")
    alice_phone = await world.online("alice@example.test/phone")
    bob_pc = await world.online("bob@example.test/pc", "<presence><priority>5</priority></presence>")
    bob_phone = await world.online("bob@example.test/phone")
    bob_old = await world.online("bob@example.test/old")  # never enables carbons
    for c in (alice, alice_phone, bob_pc, bob_phone):
        c.outbox.clear()
    for c in (alice_phone, bob_pc, bob_phone):
        await enable(c)
    await alice.send("<message to='bob@example.test' type='chat' id='m'><body>hi</body></message>")
    original = ("<message xmlns='jabber:client' to='bob@example.test' type='chat' id='m' "
                f"from='alice@example.test/home'><body>hi</body>{BOB_SID}</message>")
    bob_pc.expect(original)
    bob_phone.expect(f"<message from='bob@example.test' to='bob@example.test/phone' type='chat'>"
                     f"<received xmlns='{CARBONS}'><forwarded xmlns='{FWD}'>{original}</forwarded></received>"
                     "</message>")
    alice_phone.expect(f"<message from='alice@example.test' to='alice@example.test/phone' type='chat'>"
                       f"<sent xmlns='{CARBONS}'><forwarded xmlns='{FWD}'>{original}</forwarded></sent></message>")
    for c in (alice, bob_old, bob_pc, bob_phone, alice_phone):
        c.silent()


async def test_private_no_copy_headline_and_disable(world):
    alice = await world.online("alice@example.test/home")
    alice_phone = await world.online("alice@example.test/phone")
    bob_pc = await world.online("bob@example.test/pc", "<presence><priority>5</priority></presence>")
    bob_phone = await world.online("bob@example.test/phone")
    for c in (alice, alice_phone, bob_pc, bob_phone):
        c.outbox.clear()
    for c in (alice_phone, bob_phone):
        await enable(c)
    await alice.send(f"<message to='bob@example.test' type='chat'><body>a</body><private xmlns='{CARBONS}'/></message>")
    await alice.send("<message to='bob@example.test' type='chat'><body>b</body>"
                     "<no-copy xmlns='urn:xmpp:hints'/></message>")
    await alice.send("<message to='bob@example.test/pc' type='groupchat'><body>c</body></message>")
    assert len(bob_pc.outbox) == 3
    bob_phone.silent()
    alice_phone.silent()
    await bob_phone.send(f"<iq type='set' id='d'><disable xmlns='{CARBONS}'/></iq>")
    bob_phone.expect("<iq type='result' id='d' to='bob@example.test/phone'/>")
    await alice.send("<message to='bob@example.test' type='chat'><body>d</body></message>")
    bob_phone.silent()
    alice_phone.expect(f"<message from='alice@example.test' to='alice@example.test/phone' type='chat'>"
                       f"<sent xmlns='{CARBONS}'><forwarded xmlns='{FWD}'><message xmlns='jabber:client' "
                       "to='bob@example.test' type='chat' from='alice@example.test/home'>"
                       f"<body>d</body>{BOB_SID}</message>"
                       "</forwarded></sent></message>")
