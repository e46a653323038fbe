"""The sans-IO stanza reader and stanza builders of loadtest.xmpp_client, as transcripts."""

import xml.etree.ElementTree as ET

import pytest

from presence_ha.loadtest.xmpp_client import (
    NS_CLIENT,
    NS_STREAM,
    RosterItem,
    StanzaReader,
    StreamClosed,
    StreamOpened,
    local_tag,
    message_xml,
    parse_roster,
    presence_xml,
    stream_header,
)

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='example.test' "
          b"version='1.0'>")
FEATURES = (b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>")


def test_server_sends_header_and_features():
    events = StanzaReader().feed(HEADER + FEATURES)
    assert events[0] == StreamOpened({"id": "s1", "from": "example.test", "version": "1.0"})
    assert events[1].tag == f"{{{NS_STREAM}}}features"
    assert len(events) == 2


def test_stanza_split_at_every_byte_comes_out_once():
    reader = StanzaReader()
    data = HEADER + b"<message from='a@x/r' type='chat'><body>hi &amp; bye</body></message>"
    events = [e for i in range(len(data)) for e in reader.feed(data[i:i + 1])]
    assert isinstance(events[0], StreamOpened)
    assert events[1].tag == f"{{{NS_CLIENT}}}message"
    assert events[1].findtext(f"{{{NS_CLIENT}}}body") == "hi & bye"


def test_finished_stanzas_are_not_kept_in_the_tree():
    reader = StanzaReader()
    reader.feed(HEADER)
    for _ in range(50):
        reader.feed(b"<presence from='a@x/r'/>")
    assert len(list(reader._root)) == 0


def test_stream_close_is_reported():
    reader = StanzaReader()
    reader.feed(HEADER)
    assert reader.feed(b"</stream:stream>") == [StreamClosed()]


def test_restart_begins_a_new_document():
    reader = StanzaReader()
    reader.feed(HEADER + FEATURES)
    reader.restart()  # after SASL success, the server sends a new header
    events = reader.feed(HEADER + FEATURES)
    assert isinstance(events[0], StreamOpened) and len(events) == 2


def test_garbage_raises_parse_error():
    reader = StanzaReader()
    reader.feed(HEADER)
    with pytest.raises(ET.ParseError):
        reader.feed(b"<a></b>")


def test_builders_escape_text_and_attributes():
    assert presence_xml() == "<presence/>"
    assert presence_xml(to="b@x", type_="subscribe") == "<presence to=\"b@x\" type=\"subscribe\"/>"
    assert presence_xml(status="<away> & 'out'") == (
        "<presence><status>&lt;away&gt; &amp; 'out'</status></presence>")
    assert message_xml("b@x/r", "1 < 2", "m1") == (
        "<message to=\"b@x/r\" type='chat' id=\"m1\"><body>1 &lt; 2</body></message>")


def test_built_stanzas_parse_back():
    reader = StanzaReader()
    reader.feed(HEADER)
    [msg] = reader.feed(message_xml("b@x/r", "b 1 2.5").encode())
    assert local_tag(msg) == "message" and msg.get("to") == "b@x/r"


def test_stream_header_names_the_domain():
    assert b"to=\"example.test\"" in stream_header("example.test")


def test_roster_result_is_parsed():
    reader = StanzaReader()
    reader.feed(HEADER)
    [iq] = reader.feed(
        b"<iq type='result' id='q1'><query xmlns='jabber:iq:roster' ver='1'>"
        b"<item jid='b@x' subscription='both'/><item jid='c@x' subscription='none' ask='subscribe'/>"
        b"</query></iq>")
    assert parse_roster(iq) == [RosterItem("b@x", "both"), RosterItem("c@x", "none", "subscribe")]
    [empty] = reader.feed(b"<iq type='result' id='q2'/>")
    assert parse_roster(empty) == []
