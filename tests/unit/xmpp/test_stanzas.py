"""The serializer writes clean XML: xmlns declarations only where the namespace changes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from presence_ha.server.xmpp.parser import ElementParsed, StreamParser
from presence_ha.server.xmpp.stanzas import serialize, stream_error, stream_header

HEADER = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='d' version='1.0'>"


def reparse(text: str) -> ET.Element:
    (event,) = StreamParser(10_000).feed(HEADER + text.encode())[1:]
    assert isinstance(event, ElementParsed)
    return event.element


def test_jabber_client_is_unqualified_and_other_namespaces_declared_once():
    msg = ET.Element("message", {"to": "bob@d", "type": "chat"})
    ET.SubElement(msg, "body").text = "hi"
    x = ET.SubElement(msg, "{urn:xmpp:receipts}request")
    ET.SubElement(x, "{urn:xmpp:receipts}inner")
    assert serialize(msg) == (
        "<message to='bob@d' type='chat'><body>hi</body>"
        "<request xmlns='urn:xmpp:receipts'><inner/></request></message>"
    )


def test_jabber_client_inside_a_foreign_namespace_is_redeclared():
    fwd = ET.Element("{urn:xmpp:forward:0}forwarded")
    ET.SubElement(fwd, "message").text = "x"
    assert serialize(fwd) == ("<forwarded xmlns='urn:xmpp:forward:0'>"
                              "<message xmlns='jabber:client'>x</message></forwarded>")


def test_escaping_and_xml_lang_round_trip():
    msg = ET.Element("message", {"{http://www.w3.org/XML/1998/namespace}lang": "en", "id": "a'\"<&>"})
    ET.SubElement(msg, "body").text = "<b> & 'q'"
    text = serialize(msg)
    assert "ns0" not in text and "xml:lang='en'" in text
    back = reparse(text)
    assert back.get("id") == "a'\"<&>" and back.find("body").text == "<b> & 'q'"


def test_tails_and_mixed_content_survive():
    elem = reparse("<message><body>a<b xmlns='urn:x'>c</b>d</body></message>")
    assert serialize(elem) == "<message><body>a<b xmlns='urn:x'>c</b>d</body></message>"


def test_stream_error_and_header():
    assert serialize(stream_error("see-other-host", other_host="h:5")) == (
        "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>h:5</see-other-host></stream:error>"
    )
    header = stream_header(stream_id="1", domain="d", to="a@d").decode()
    assert header.startswith("<?xml version='1.0'?><stream:stream xmlns='jabber:client'") and "to='a@d'" in header
