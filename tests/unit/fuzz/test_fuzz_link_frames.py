"""Fuzzing what a peer node sends: the link's frames (`server.link.frames`) and the
STANZA and CONTROL frames they carry (`server.cluster.wire`).

Properties: any bytes, cut anywhere, split into frames or fail with `FrameError`; any
body decodes or fails with `FrameError`; any STANZA or CONTROL payload decodes or fails
with `WireError`, and the long-lived stanza parser still decodes valid frames right
after any garbage; encode then decode gives back what was encoded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from presence_ha.server.cluster import wire
from presence_ha.server.link import frames
from tests.unit.fuzz.profile import fuzz

pytestmark = pytest.mark.timeout(600)  # CI's example counts take minutes on a loaded machine

DECODERS = (frames.decode_hello, frames.decode_challenge, frames.decode_auth, frames.decode_data, frames.decode_ack,
            frames.decode_error)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@fuzz(80)
@given(bodies=st.lists(st.binary(min_size=1, max_size=80), max_size=5), junk=st.binary(max_size=40),
       points=st.lists(st.integers(0, 1000), max_size=8))
def test_frame_reader_splits_or_refuses(bodies, junk, points):
    reader = frames.FrameReader(max_size=64)
    stream = b"".join(frames.frame(b) for b in bodies) + junk
    got = []
    try:
        for piece in cut(stream, points):
            reader.feed(piece)
            while (body := reader.next_body()) is not None:
                got.append(body)
    except frames.FrameError:
        assert any(len(b) > 64 for b in bodies) or junk
        return
    expected = list(itertools.takewhile(lambda b: len(b) <= 64, bodies))
    assert got[: len(expected)] == expected


@fuzz(200)
@given(body=st.binary(max_size=120) | st.sampled_from([bytes([t]) for t in range(8)]).flatmap(
    lambda head: st.binary(max_size=100).map(lambda rest: head + rest)))
def test_frame_bodies_decode_or_fail_cleanly(body):
    for decode in DECODERS:
        with contextlib.suppress(frames.FrameError):
            decode(body)


@fuzz(60)
@given(seq=st.integers(0, (1 << 62) - 1), ack=st.integers(0, (1 << 62) - 1), kind=st.sampled_from(list(frames.Kind)),
       payload=st.binary(max_size=50))
def test_data_frames_round_trip(seq, ack, kind, payload):
    assert frames.decode_data(frames.encode_data(seq, ack, kind, payload)) == frames.Data(seq, ack, kind, payload)


XML_ATOMS = [b"<message>", b"</message>", b"<message/>", b"<presence to='a@example.test'/>", b"<iq>", b"</iq>",
             b"<x xmlns='urn:x'>", b"</x>", b"<!--c-->", b"<?pi x?>", b"<!DOCTYPE x>", b"&amp;", b"&xxe;", b"&#0;",
             b"<![CDATA[<>]]>", b"</frames>", b"<_/>", b"'", b"\"", b">", b"<", b"\x00", b"\xff", b"text", b" ",
             b"<?xml version='1.0'?>", b"R\n", b"U s1\n", b"D s2\n", b"\n"]
payloads = st.lists(st.sampled_from(XML_ATOMS) | st.binary(max_size=10), max_size=12).map(b"".join)
VALID = ET.fromstring("<message to='bob@example.test' from='alice@example.test/r' id='m1'><body>hi &amp; "
                      "bye</body></message>")


@fuzz(100)
@given(garbage=st.lists(payloads, min_size=1, max_size=4))
@example(garbage=[b"R\n<message>"])
@example(garbage=[b"R\n<message/></frames>"])
@example(garbage=[b"R\n<message><_/>"])
def test_stanza_frames_decode_or_fail_and_the_parser_recovers(garbage):
    valid = wire.encode_routed(VALID)
    for payload in garbage:
        for decode in (wire.decode_stanza, wire.decode_session):
            try:
                decoded = decode(payload)
            except wire.WireError:
                pass
            else:
                assert decoded.stanza.tag in ("message", "presence", "iq")
        recipient = wire.routed_recipient(payload)
        assert recipient is None or isinstance(recipient, str)
        frame = wire.decode_stanza(valid)  # after any garbage, a valid frame still decodes
        assert ET.tostring(frame.stanza) == ET.tostring(VALID)


@fuzz(80)
@given(payload=st.binary(max_size=60) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8).map(lambda v: json.dumps(v).encode()))
@example(payload=b'{"op": "open"}')
@example(payload=b'{"op": ["open"]}')
def test_control_frames_decode_or_fail_cleanly(payload):
    try:
        control = wire.decode_control(payload)
    except wire.WireError:
        return
    assert isinstance(control.op, wire.Op)
