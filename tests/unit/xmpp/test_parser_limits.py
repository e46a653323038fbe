"""Bounds of pending input (issue #19 items 1 and 5): the stream header, its namespace
declarations and incomplete tags, in the parser and in the stream core's phases."""

from __future__ import annotations

import pytest

from presence_ha.server.xmpp import events as ev
from presence_ha.server.xmpp.errors import StreamCondition
from presence_ha.server.xmpp.parser import (
    PRIMER_RELEASE_BYTES,
    ElementParsed,
    HeaderParsed,
    ParseFault,
    ParserLimits,
    StreamParser,
)
from tests.unit.xmpp.transcript import HEADER as TEXT_HEADER
from tests.unit.xmpp.transcript import Transcript

HEADER = TEXT_HEADER.encode()
LIMITS = ParserLimits(header_bytes=1000, header_namespaces=4, tag_bytes=2000)


def faults(events) -> list[str]:
    return [e.error.text or "" for e in events if isinstance(e, ParseFault)]


def feed_pieces(parser: StreamParser, data: bytes, size: int) -> list:
    return [e for i in range(0, len(data), size) for e in parser.feed(data[i : i + size])]


# -- the stream header ------------------------------------------------------------------

@pytest.mark.parametrize("piece", [1, 7, 100, 5000])
def test_an_endless_header_is_refused_at_the_limit(piece):
    parser = StreamParser(100_000, LIMITS)
    events = feed_pieces(parser, b"<stream:stream a='" + b"x" * 2000, piece)
    assert faults(events) == ["stream header larger than 1000 bytes"]
    assert parser.dead and parser.feed(b"'>") == []


def test_what_precedes_the_header_counts_toward_it():
    parser = StreamParser(100_000, LIMITS)
    assert faults(parser.feed(b"<?xml version='1.0'?>" + b" " * 1000 + HEADER)) == [
        "stream header larger than 1000 bytes"]


def test_a_header_at_the_limit_is_accepted():
    header = HEADER[:-1] + b" pad='" + b"p" * (1000 - len(HEADER) - 7) + b"'>"
    assert len(header) == 1000
    (event,) = StreamParser(100_000, LIMITS).feed(header)
    assert isinstance(event, HeaderParsed) and len(event.attrs["pad"]) == 1000 - len(HEADER) - 7


def test_namespace_declarations_on_the_header_are_bounded():
    def header(count: int) -> bytes:
        extra = "".join(f" xmlns:n{i}='urn:n{i}'" for i in range(count - 2))
        return HEADER.replace(b" to=", extra.encode() + b" to=", 1)

    accepted = StreamParser(100_000, LIMITS).feed(header(4) + b"<presence><n0:x/><n1:y/></presence>")
    assert [type(e) for e in accepted] == [HeaderParsed, ElementParsed]
    assert accepted[1].element.find("{urn:n1}y") is not None
    assert faults(StreamParser(100_000, LIMITS).feed(header(5))) == [
        "more than 4 namespace declarations on the stream header"]


def test_80000_declarations_are_refused_by_the_default_limits():
    extra = "".join(f" xmlns:n{i}='urn:n{i}'" for i in range(80_000))
    data = HEADER.replace(b" to=", extra.encode() + b" to=", 1)
    assert faults(StreamParser(256 * 1024).feed(data)) == ["stream header larger than 4096 bytes"]
    wide = ParserLimits(header_bytes=len(data))
    assert faults(StreamParser(256 * 1024, wide).feed(data)) == [
        "more than 16 namespace declarations on the stream header"]


# -- incomplete tags after the header ------------------------------------------------------

@pytest.mark.parametrize("piece", [1, 3, 64, 1500, 20_000])
@pytest.mark.parametrize("opening", [b"<message a='", b"<message a='>>", b"<message", b"<message><body>x</body",
                                     b"<message><x:y xmlns:x='urn:x' b=\""])
def test_an_endless_tag_is_refused_at_the_limit(opening, piece):
    parser = StreamParser(100_000, LIMITS)
    parser.feed(HEADER)
    events = feed_pieces(parser, opening + b"z" * 3000, piece)
    assert faults(events) == ["tag larger than 2000 bytes"]


def test_the_tag_limit_never_exceeds_the_stanza_limit():
    parser = StreamParser(1500, LIMITS)
    parser.feed(HEADER)
    assert faults(parser.feed(b"<message a='" + b"z" * 1600)) == ["tag larger than 1500 bytes"]


@pytest.mark.parametrize("piece", [1, 2, 5, 13, 700])
def test_tags_up_to_the_limit_arrive_whole_in_any_pieces(piece):
    value = "v>'\"é" * 150  # close brackets and quotes inside the value, multi-byte characters
    tag = f"<message a=\"{value.replace(chr(34), '&quot;')}\">".encode()
    assert len(tag) < 2000
    stanza = tag + b"<body>" + "é".encode() * 50 + b"</body></message>"
    parser = StreamParser(100_000, LIMITS)
    events = feed_pieces(parser, HEADER + stanza + b"\n" + stanza, piece)
    assert not faults(events)
    assert [e.element.get("a") for e in events if isinstance(e, ElementParsed)] == [value, value]


def test_held_input_counts_toward_the_stanza_limit():
    # each piece ends inside a two-byte character: expat keeps a token pending, so the
    # next pieces (no '>') are held back, and still counted while they arrive
    parser = StreamParser(1000, ParserLimits(tag_bytes=10_000))
    parser.feed(HEADER + b"<message><body>")
    events = feed_pieces(parser, "é".encode() * 800, 3)
    assert faults(events) == ["stanza larger than 1000 bytes"]


def test_faults_in_held_input_are_found_when_it_is_parsed():
    parser = StreamParser(100_000, LIMITS)
    parser.feed(HEADER + b"<message a='")
    assert parser.feed(b"\xff\xfe") == []  # held: no '>' yet
    assert [e.error.condition for e in parser.feed(b"'/>") if isinstance(e, ParseFault)] == [
        StreamCondition.NOT_WELL_FORMED]


# -- the stream header's size does not reach each stanza's cost -----------------------------

def test_a_large_primer_keeps_the_parser_and_namespaces_still_resolve():
    extra = "".join(f" xmlns:n{i}='urn:{'u' * 60}{i}'" for i in range(10))
    header = HEADER.replace(b" to=", extra.encode() + b" to=", 1)
    parser = StreamParser(100_000, ParserLimits())
    parser.feed(header + b"<presence/>")
    assert parser._parser is None  # the primer is built on first use...
    (event,) = parser.feed(b"<presence><n9:x/></presence>")
    assert event.element.find("{urn:" + "u" * 60 + "9}x") is not None
    assert len(parser._primer or b"") > PRIMER_RELEASE_BYTES
    assert parser._parser is not None  # ...and, that long, is not parsed again per stanza
    (event,) = parser.feed(b"<presence><n3:x/></presence>")
    assert event.element.find("{urn:" + "u" * 60 + "3}x") is not None


# -- the stream core: small limits before authentication, larger after -------------------------

def test_before_authentication_the_small_tag_limit_applies():
    t = Transcript(max_tag_bytes_unauthenticated=1000, max_tag_bytes=8000)
    t.open()
    t.recv("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN' x='" + "a" * 1200)
    out = t.sent()
    assert "<policy-violation" in out and "tag larger than 1000 bytes" in out and out.endswith("</stream:stream>")
    assert any(isinstance(f, ev.StreamClosed) for f in t.facts())


def test_after_authentication_the_larger_tag_limit_applies():
    t = Transcript(max_tag_bytes_unauthenticated=1000, max_tag_bytes=8000)
    t.login_and_bind()
    t.recv("<message to='bob@example.test' x='" + "a" * 5000 + "'><body>hi</body></message>")
    assert [type(f) for f in t.facts()] == [ev.StanzaReceived]
    t.recv("<message to='bob@example.test' x='" + "a" * 9000)
    out = t.sent()
    assert "<policy-violation" in out and "tag larger than 8000 bytes" in out


def test_an_endless_header_before_authentication_ends_the_stream():
    t = Transcript(max_header_bytes=500)
    for _ in range(10):
        t.recv("<stream:stream xmlns='jabber:client' a='" + "h" * 100)
    out = t.sent()
    assert "<policy-violation" in out and "stream header larger than 500 bytes" in out
