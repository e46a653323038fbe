"""Fuzzing the client stream: the restricted XML parser (`server.xmpp.parser`) and the
stream core around it (`server.xmpp.stream`).

Properties:
- Any bytes, cut anywhere: `feed` never raises; a fault is the last event and ends the
  parser; a header comes first, at most once.
- A valid stream (random stanzas: attributes with quotes and `>`, text with markup
  characters and non-ASCII, prefixed namespaces), cut anywhere, gives back exactly its
  stanzas and no fault; the same stream with one byte changed never crashes.
- The stream core fed any sequence of chunks (negotiation elements, stanzas, junk), with
  the host answering what it asks, never raises and only emits known events.
"""

from __future__ import annotations

import itertools
import random
import xml.etree.ElementTree as ET

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from presence_ha.server.xmpp import events as ev
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.parser import (
    ElementParsed,
    FooterParsed,
    HeaderParsed,
    ParseFault,
    ParserLimits,
    StreamParser,
)
from presence_ha.server.xmpp.stream import StreamSettings, XmppStream
from tests.unit.fuzz.profile import fuzz
from tests.unit.xmpp.transcript import keys_for

pytestmark = pytest.mark.timeout(600)  # CI's example counts take minutes on a loaded machine

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          b" xmlns:h='urn:header' to='example.test' version='1.0'>")
LIMITS = ParserLimits(header_bytes=4096, header_namespaces=16, tag_bytes=16_384)
MAX_STANZA = 64 * 1024


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` in pieces at `points` (positions taken modulo its length)."""
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(parser: StreamParser, pieces: list[bytes]) -> list:
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events


def check_event_order(events: list) -> None:
    faults = [i for i, e in enumerate(events) if isinstance(e, ParseFault)]
    assert faults in ([], [len(events) - 1]), events
    headers = [i for i, e in enumerate(events) if isinstance(e, HeaderParsed)]
    assert headers in ([], [0]), events
    for event in events:
        assert isinstance(event, (HeaderParsed, ElementParsed, FooterParsed, ParseFault))


# -- any bytes -------------------------------------------------------------------------

JUNK_ATOMS = [b"<", b">", b"/", b"'", b'"', b"=", b"&", b";", b"&amp;", b"&#x41;", b"&#0;", b"<![CDATA[", b"]]>",
              b"<!--", b"-->", b"<?", b"?>", b"<!DOCTYPE", b"xmlns", b"xmlns:a='urn:a'", b"a:", b" ", b"\r\n",
              b"\xc3\xa9", b"\xc3", b"\xff", b"\x00", b"message", b"</message>", b"<message>", b"stream:stream",
              b"</stream:stream>", b"<stream:stream xmlns='jabber:client'>", b"x" * 100]
junk = st.lists(st.one_of(st.sampled_from(JUNK_ATOMS), st.binary(max_size=20)), max_size=60).map(b"".join)


@fuzz(80)
@given(prefix=st.sampled_from([b"", HEADER]), data=junk, points=st.lists(st.integers(0, 10_000), max_size=12))
@example(prefix=HEADER, data=b"<message a='" + b">" * 3000, points=[13, 14, 15])
@example(prefix=b"", data=b"<stream:stream a='" + b"x" * 5000, points=[1, 2])
def test_any_bytes_cut_anywhere(prefix, data, points):
    parser = StreamParser(MAX_STANZA, LIMITS)
    events = feed_all(parser, cut(prefix + data, points))
    check_event_order(events)
    if parser.dead:
        assert parser.feed(b"<presence/>") == []


# -- valid streams ---------------------------------------------------------------------

NAMES = st.sampled_from(["message", "presence", "iq", "body", "x", "item", "h:data", "q:thing"])
ALPHABET = "ab z0<>&;'\"/=\té€\u200b\U0001d11e"  # markup characters, multi-byte UTF-8 of 2, 3 and 4 bytes
TEXT = st.text(ALPHABET + "\n", max_size=30)
ATTR_VALUE = st.text(ALPHABET, max_size=20)


def _escape(text: str, quote: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace("\r", "&#13;")
    return text.replace(quote, "&apos;" if quote == "'" else "&quot;")


@st.composite
def elements(draw, depth: int = 0) -> tuple[str, ET.Element]:
    """(XML text, the element as the parser must give it back)."""
    name = draw(NAMES) if depth else draw(st.sampled_from(["message", "presence", "iq"]))
    attrs = draw(st.dictionaries(st.sampled_from(["to", "id", "type", "a", "h:b"]), ATTR_VALUE, max_size=3))
    quote = draw(st.sampled_from(["'", '"']))
    declares_q = name.startswith("q:")
    text = draw(TEXT)
    children = draw(st.lists(elements(depth + 1), max_size=2)) if depth < 2 else []
    written = "".join(f" {k}={quote}{_escape(v, quote)}{quote}" for k, v in attrs.items())
    if declares_q:
        written += " xmlns:q='urn:q'"
    markup = f"<{name}{written}>{_escape(text, quote)}{''.join(c for c, _ in children)}</{name}>"
    clark = {"h": "{urn:header}", "q": "{urn:q}"}
    prefix, _, local = name.rpartition(":")
    elem = ET.Element(clark[prefix] + local if prefix else local,
                      {(clark[k[0]] + k[2:] if ":" in k else k): v.replace("\t", " ") for k, v in attrs.items()})
    elem.text = text.replace("\r\n", "\n") or None
    for _, child in children:
        elem.append(child)
    return markup, elem


def canonical(elem: ET.Element) -> tuple:
    return (elem.tag, sorted(elem.attrib.items()), elem.text or "", [canonical(c) for c in elem])


@fuzz(40)
@given(stanzas=st.lists(elements(), min_size=1, max_size=4), gaps=st.lists(st.sampled_from(["", " ", "\n", "\r\n "]),
       min_size=4, max_size=4), points=st.lists(st.integers(0, 100_000), max_size=16))
def test_valid_streams_cut_anywhere_come_back_whole(stanzas, gaps, points):
    data = HEADER + "".join(markup + gap for (markup, _), gap in zip(stanzas, gaps, strict=False)).encode()
    parser = StreamParser(MAX_STANZA, LIMITS)
    events = feed_all(parser, cut(data + b"</stream:stream>", points))
    assert not [e for e in events if isinstance(e, ParseFault)], events
    got = [canonical(e.element) for e in events if isinstance(e, ElementParsed)]
    assert got == [canonical(elem) for _, elem in stanzas]
    assert isinstance(events[0], HeaderParsed) and isinstance(events[-1], FooterParsed)


@fuzz(30)
@given(stanzas=st.lists(elements(), min_size=1, max_size=3), where=st.integers(0, 10_000), byte=st.integers(0, 255),
       points=st.lists(st.integers(0, 100_000), max_size=8))
def test_a_valid_stream_with_one_byte_changed_never_crashes(stanzas, where, byte, points):
    data = bytearray(HEADER + "".join(markup for markup, _ in stanzas).encode())
    data[where % len(data)] = byte
    events = feed_all(StreamParser(MAX_STANZA, LIMITS), cut(bytes(data), points))
    check_event_order(events)


# -- the stream core -------------------------------------------------------------------------

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
CHUNKS = [
    HEADER.decode(), "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    f"<auth xmlns='{SASL}' mechanism='PLAIN'>AGFsaWNlAHMzY3JldA==</auth>",
    f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>biwsbj1hbGljZSxyPWFiYw==</auth>",
    f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'/>", f"<auth xmlns='{SASL}' mechanism='X'>=</auth>",
    f"<response xmlns='{SASL}'>Yz1iaXdzLHI9YWJjLHA9eHh4</response>", f"<response xmlns='{SASL}'/>",
    f"<abort xmlns='{SASL}'/>", f"<auth xmlns='{SASL}' mechanism='PLAIN'>%%%</auth>",
    "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    "<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    "<iq type='get' id='reg'><query xmlns='jabber:iq:register'/></iq>",
    ("<iq type='set' id='reg2'><query xmlns='jabber:iq:register'><username>u</username><password>p</password>"
     "</query></iq>"),
    "<enable xmlns='urn:xmpp:sm:3' resume='true'/>", "<r xmlns='urn:xmpp:sm:3'/>", "<a xmlns='urn:xmpp:sm:3' h='7'/>",
    "<a xmlns='urn:xmpp:sm:3' h='x'/>", "<resume xmlns='urn:xmpp:sm:3' previd='p' h='0'/>",
    "<active xmlns='urn:xmpp:csi:0'/>", "<message to='bob@example.test'><body>hi</body></message>",
    "<message from='mallory@evil'/>", "<presence/>", "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    "</stream:stream>", " ", "<unknown/>", "<message a='", "'/>", "&", "<", ">",
]


def answer(stream: XmppStream, event: ev.Event, rng: random.Random) -> None:
    """What a host would answer to `event`, chosen at random where several fit."""
    if isinstance(event, ev.TlsRequested):
        stream.tls_established()
    elif isinstance(event, ev.CredentialsRequested):
        stream.credentials_found(rng.choice([None, keys_for("s3cret", event.mechanism)]))
    elif isinstance(event, ev.DerivationRequested):
        stream.password_derived(rng.choice([b"\0" * 32, b"x" * 32]))
    elif isinstance(event, ev.RegistrationRequested):
        stream.registration_done(None)
    elif isinstance(event, ev.PasswordVerified):
        stream.accept_login()
    elif isinstance(event, ev.ResumeRequested):
        stream.resume_refused()
    elif isinstance(event, ev.BindRequested):  # refused now and then (the resource quota)
        stream.bind_done(rng.choice([None, StanzaError(Condition.RESOURCE_CONSTRAINT)]))


@fuzz(60)
@given(chunks=st.lists(st.sampled_from(CHUNKS) | junk.map(lambda b: b.decode("latin-1")), max_size=20),
       tls=st.booleans(), seed=st.integers(0, 2**16), points=st.lists(st.integers(0, 10_000), max_size=6))
def test_the_stream_core_takes_any_sequence(chunks, tls, seed, points):
    rng = random.Random(seed)
    stream = XmppStream(StreamSettings("example.test", registration_enabled=True), rng, b"secret", tls_active=tls)
    for piece in cut("".join(chunks).encode("utf-8", "surrogatepass"), points):
        stream.receive_data(piece)
        for _ in range(10):  # the host answers until the core stops asking
            events = stream.events()
            for event in events:
                assert isinstance(event, ev.Event.__args__)  # type: ignore[attr-defined]
                answer(stream, event, rng)
            if not events:
                break
