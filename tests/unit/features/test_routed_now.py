"""A routed message delivered at once (`deliver_routed_now`, `messaging.deliver_now`):
it reaches the sessions `inbound` would pick, with the frame's bytes, or it is left
(False, nothing sent) to the full path for everything the common case does not cover."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from presence_ha.server.cluster import wire
from presence_ha.server.cluster.routing import decode_routed, deliver_routed_now
from presence_ha.server.features import carbons
from presence_ha.server.router import MessageDelivered
from presence_ha.server.sessions import SessionKind
from tests.unit.features.transcript import parse

ALICE = "alice@example.test/home"


def routed(text: str) -> tuple[ET.Element, bytes]:
    """What a peer node sends for `text` (a stanza its client sent, 'from' stamped), decoded here."""
    payload = wire.encode_routed(parse(text))
    return payload, wire.routed_body(payload)


def now(world, text: str) -> tuple[bool, bytes]:
    payload, body = routed(text)
    stanza = decode_routed(world.ctx, "n2", payload)
    assert stanza is not None
    return deliver_routed_now(world.ctx, stanza, payload), body


async def test_bare_jid_chat_goes_to_the_top_priority_with_the_frame_bytes(world):
    low = await world.online("bob@example.test/low", "<presence><priority>1</priority></presence>")
    high = await world.online("bob@example.test/high", "<presence><priority>7</priority></presence>")
    low.outbox.clear(), high.outbox.clear()
    done, body = now(world, f"<message to='bob@example.test' type='chat' id='m1' from='{ALICE}'>"
                            "<body>hi &amp; bye</body></message>")
    assert done
    high.expect(f"<message to='bob@example.test' type='chat' id='m1' from='{ALICE}'>"
                "<body>hi &amp; bye</body></message>")
    assert high.wires[-1] == body and body.startswith(b"<message ")
    low.silent()


async def test_headline_goes_to_every_non_negative_resource(world):
    a = await world.online("bob@example.test/a", "<presence><priority>1</priority></presence>")
    b = await world.online("bob@example.test/b", "<presence><priority>5</priority></presence>")
    neg = await world.online("bob@example.test/neg", "<presence><priority>-1</priority></presence>")
    for c in (a, b, neg):
        c.outbox.clear()
    done, _ = now(world, f"<message to='bob@example.test' type='headline' from='{ALICE}'><body>n</body></message>")
    assert done
    a.expect(f"<message to='bob@example.test' type='headline' from='{ALICE}'><body>n</body></message>")
    b.expect(f"<message to='bob@example.test' type='headline' from='{ALICE}'><body>n</body></message>")
    neg.silent()


async def test_full_jid_of_an_active_session(world):
    bob = await world.online("bob@example.test/pc")
    done, _ = now(world, f"<message to='bob@example.test/pc' from='{ALICE}'><body>x</body></message>")
    assert done
    bob.expect(f"<message to='bob@example.test/pc' from='{ALICE}'><body>x</body></message>")


async def test_what_the_common_case_leaves_to_the_full_path(world):
    bob = await world.online("bob@example.test/pc")
    await world.connect("carol@example.test/backup", kind=SessionKind.INACTIVE)
    cases = [
        f"<message to='bob@example.test' type='groupchat' from='{ALICE}'><body>g</body></message>",  # an error answer
        f"<message to='bob@example.test' type='error' from='{ALICE}'/>",
        f"<message to='dave@example.test' type='chat' from='{ALICE}'><body>o</body></message>",  # offline storage
        f"<message to='nobody@example.test' type='chat' from='{ALICE}'><body>u</body></message>",  # unknown account
        f"<message to='carol@example.test/backup' type='chat' from='{ALICE}'><body>i</body></message>",  # inactive only
        f"<message to='bob@example.test/gone' type='chat' from='{ALICE}'><body>r</body></message>",  # no such resource
        f"<presence to='bob@example.test' type='probe' from='{ALICE}'/>",
        f"<presence to='bob@example.test' type='subscribe' from='{ALICE}'/>",
    ]
    payload = (b"R\n<message xmlns='' to='bob@example.test' type='chat' from='" + ALICE.encode()
               + b"'><body>n</body></message>")
    stanza = decode_routed(world.ctx, "n2", payload)
    # written again, not as it came
    assert stanza is not None and deliver_routed_now(world.ctx, stanza, payload) is False
    for text in cases:
        assert now(world, text)[0] is False, text
    bob.silent()


async def test_presence_goes_to_every_available_resource_or_the_full_jid(world):
    a = await world.online("bob@example.test/a")
    neg = await world.online("bob@example.test/neg", "<presence><priority>-1</priority></presence>")
    backup = await world.connect("bob@example.test/backup", kind=SessionKind.INACTIVE)
    a.outbox.clear(), neg.outbox.clear()
    done, body = now(world, f"<presence to='bob@example.test' from='{ALICE}'><show>away</show></presence>")
    assert done
    for c in (a, neg):
        c.expect(f"<presence to='bob@example.test' from='{ALICE}'><show>away</show></presence>")
        assert c.wires[-1] == body
    backup.silent()
    assert now(world, f"<presence to='bob@example.test/neg' type='unavailable' from='{ALICE}'/>")[0]
    neg.expect(f"<presence to='bob@example.test/neg' type='unavailable' from='{ALICE}'/>")
    assert now(world, f"<presence to='bob@example.test/backup' from='{ALICE}'/>")[0]  # dropped, as inbound does
    a.silent(), backup.silent()


async def test_carbons_anywhere_on_the_account_take_the_full_path(world):
    bob = await world.online("bob@example.test/pc")
    phone = await world.online("bob@example.test/phone", "<presence><priority>-1</priority></presence>")
    await phone.send("<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
    phone.outbox.clear(), bob.outbox.clear()
    assert now(world, f"<message to='bob@example.test' type='chat' from='{ALICE}'><body>c</body></message>")[0] is False
    bob.silent()
    phone.silent()


async def test_carbons_are_the_only_observer_of_message_delivered(world):
    """`deliver_now` skips the `MessageDelivered` announcement: right only while this holds."""
    assert world.router._observers.get(MessageDelivered) == [carbons.copy_received]
