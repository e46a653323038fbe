"""The restricted XML parser (RFC 6120 §11): what it yields and what it refuses."""

from __future__ import annotations

import pytest

from presence_ha.server.xmpp.errors import StreamCondition
from presence_ha.server.xmpp.parser import (
    TEXT_BUFFER,
    ElementParsed,
    FooterParsed,
    HeaderParsed,
    ParseFault,
    StreamParser,
)

HEADER = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='d' version='1.0'>"


def faults(events) -> list[StreamCondition]:
    return [e.error.condition for e in events if isinstance(e, ParseFault)]


def test_header_stanza_footer():
    events = StreamParser(1000).feed(
        HEADER + b" \n<message to='a@d'><body>hi &amp; &#x41;</body></message>\t</stream:stream>")
    header, message, footer = events
    assert isinstance(header, HeaderParsed) and header.default_ns == "jabber:client"
    assert header.name == "{http://etherx.jabber.org/streams}stream" and header.attrs["version"] == "1.0"
    assert isinstance(message, ElementParsed) and message.element.tag == "message"
    assert message.element.find("body").text == "hi & A"
    assert isinstance(footer, FooterParsed)


def test_byte_by_byte_feeding_gives_the_same_elements():
    data = HEADER + "<message><body>héllo</body><x xmlns='urn:x' xml:lang='fr'/></message>".encode()
    parser = StreamParser(1000)
    events = [e for i in range(len(data)) for e in parser.feed(data[i : i + 1])]
    (message,) = [e for e in events if isinstance(e, ElementParsed)]
    assert message.element.find("body").text == "héllo"
    x = message.element.find("{urn:x}x")
    assert x is not None and x.get("{http://www.w3.org/XML/1998/namespace}lang") == "fr"


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (b"<!DOCTYPE stream [<!ENTITY x 'y'>]>" + HEADER, StreamCondition.RESTRICTED_XML),
        (HEADER + b"<message><body>&xxe;</body></message>", StreamCondition.RESTRICTED_XML),
        (HEADER + b"<?php evil ?>", StreamCondition.RESTRICTED_XML),
        (HEADER + b"<!-- a comment -->", StreamCondition.RESTRICTED_XML),
        (HEADER + b"<message><body></message>", StreamCondition.NOT_WELL_FORMED),
        (HEADER + b"<message a='1' a='2'/>", StreamCondition.NOT_WELL_FORMED),
        (HEADER + b"<message>\xff\xfe</message>", StreamCondition.NOT_WELL_FORMED),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?>" + HEADER, StreamCondition.UNSUPPORTED_ENCODING),
        (HEADER + b"some text", StreamCondition.BAD_FORMAT),
        (HEADER + b"<a>" * 70, StreamCondition.POLICY_VIOLATION),
    ],
    ids=["dtd", "entity-ref", "pi", "comment", "mismatched", "dup-attr", "bad-utf8", "latin1", "text", "deep"],
)
def test_refused_input(data, condition):
    assert faults(StreamParser(100_000).feed(data)) == [condition]


def test_billion_laughs_is_refused_before_expansion():
    bomb = b"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>"
    assert faults(StreamParser(1000).feed(bomb)) == [StreamCondition.RESTRICTED_XML]


def test_oversized_stanza_is_refused_while_it_arrives():
    parser = StreamParser(1000)
    assert faults(parser.feed(HEADER + b"<message><body>")) == []
    assert faults(parser.feed(b"x" * 600)) == []
    assert faults(parser.feed(b"x" * 600)) == [StreamCondition.POLICY_VIOLATION]
    assert parser.dead and parser.feed(b"</body></message>") == []


def test_stanza_at_the_limit_is_accepted_and_size_is_per_stanza():
    parser = StreamParser(200)
    stanza = b"<message><body>" + b"y" * 150 + b"</body></message>"
    events = parser.feed(HEADER + stanza * 5)
    assert len([e for e in events if isinstance(e, ElementParsed)]) == 5 and not faults(events)


def test_text_longer_than_the_text_buffer_arrives_whole():
    body = "é" * (3 * TEXT_BUFFER) + "end"  # several expat text callbacks, multi-byte chars across them
    parser = StreamParser(max_element_bytes=64 * 1024)
    events = parser.feed(HEADER + f"<message><body>{body}</body></message>".encode())
    assert [e.element.findtext("body") for e in events if isinstance(e, ElementParsed)] == [body]


# -- the expat parser is released between stanzas (idle-session memory) ------------------

def test_parser_is_released_between_stanzas_and_namespaces_survive():
    parser = StreamParser(1000)
    header = b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' xmlns:x='urn:x'>"
    parser.feed(header + b"<presence/>\n")
    assert parser._parser is None
    assert parser.feed(b"  \n") == []  # a keepalive needs no parser
    assert parser._parser is None
    (message,) = parser.feed(b"<message><x:y a='1'/></message>")
    assert message.element.find("{urn:x}y").get("a") == "1"
    assert parser._parser is None
    (footer,) = parser.feed(b"</s:stream>")
    assert isinstance(footer, FooterParsed)


@pytest.mark.parametrize("tail", [b"<mess", b"<message a='>'", b"<message><body>x", b"x"])
def test_parser_is_kept_while_input_is_pending(tail):
    parser = StreamParser(1000)
    parser.feed(HEADER)
    parser.feed(b"<presence a='/>'/>" + tail)
    assert parser._parser is not None


def test_a_quoted_close_bracket_does_not_end_the_tag_early():
    parser = StreamParser(1000)
    parser.feed(HEADER)
    events = parser.feed(b"<presence a='x/>'/> ")
    assert [e.element.get("a") for e in events] == ["x/>"]
    assert parser._parser is None
    assert [e.element.tag for e in parser.feed(b"<iq type='get' id='1'/>")] == ["iq"]


def test_size_limit_and_faults_apply_after_a_release():
    parser = StreamParser(100)
    parser.feed(HEADER + b"<presence/>")
    assert parser._parser is None
    too_big = b"<message><body>" + b"x" * 200 + b"</body></message>"
    assert faults(parser.feed(too_big)) == [StreamCondition.POLICY_VIOLATION]
    parser = StreamParser(1000)
    parser.feed(HEADER + b"<presence/>")
    assert faults(parser.feed(b"<!-- c -->")) == [StreamCondition.RESTRICTED_XML]
