"""What a frame from a peer becomes (server.cluster.triage): kind, bytes and inbox state in."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.cluster import wire
from presence_ha.server.cluster.inbox import InboxKey, RecipientKey
from presence_ha.server.cluster.triage import Verdict, recipient_key, routed_frame_key, triage
from presence_ha.server.link import Kind


class InboxState:
    def __init__(self, *busy: InboxKey) -> None:
        self.busy = set(busy)

    @property
    def empty(self) -> bool:
        return not self.busy

    def idle(self, key: InboxKey) -> bool:
        return key not in self.busy


def routed(to: str | None = "bob@example.test/pc") -> bytes:
    stanza = ET.Element("message", {"from": "alice@example.test/a", "type": "chat"} | ({"to": to} if to else {}))
    ET.SubElement(stanza, "body").text = "hi"
    return wire.encode_routed(stanza)


BOB: RecipientKey = "bob@example.test"


def test_with_nothing_queued_a_routed_frame_is_delivered_now_without_reading_its_key():
    assert triage(Kind.STANZA, routed(), InboxState()) == (Verdict.DELIVER_NOW, None)


def test_a_routed_frame_waits_behind_its_recipients_queue_only():
    assert triage(Kind.STANZA, routed(), InboxState("carol@example.test")) == (Verdict.DELIVER_NOW, BOB)
    assert triage(Kind.STANZA, routed(), InboxState(BOB)) == (Verdict.QUEUE, BOB)


def test_a_routed_frame_whose_recipient_is_not_readable_is_parsed_then_queued():
    assert triage(Kind.STANZA, routed(to=None), InboxState(BOB)) == (Verdict.QUEUE_PARSED, None)


@pytest.mark.parametrize("payload", [
    wire.encode_session("s1", ET.Element("message"), upstream=True),
    wire.encode_session("s1", ET.Element("message"), upstream=False),
    b"X junk\n<message/>",
])
def test_other_stanza_frames_are_session_stanzas_for_the_decoder(payload):
    assert triage(Kind.STANZA, payload, InboxState()) == (Verdict.SESSION, None)


def test_control_and_other_kinds():
    assert triage(Kind.CONTROL, wire.encode_control(wire.Op.MOVED), InboxState()) == (Verdict.CONTROL, None)
    assert triage(Kind.HEARTBEAT, b"", InboxState()) == (Verdict.DROP, None)


def test_the_key_read_from_the_text_is_the_parsed_stanzas_key():
    payload = routed()
    frame = wire.decode_stanza(payload)
    assert isinstance(frame, wire.Routed)
    assert routed_frame_key(payload) == recipient_key(frame.stanza) == BOB
