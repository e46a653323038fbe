"""The established stream as transcripts: stanzas, XEP-0198, XEP-0352, closing."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from presence_ha.server.xmpp import events as ev
from presence_ha.server.xmpp.stream import Phase
from tests.unit.xmpp.transcript import DOMAIN, HEADER, Transcript, keys_for

STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
SM = "urn:xmpp:sm:3"


def bound(resource: str = "phone") -> Transcript:
    t = Transcript()
    t.login_and_bind(resource)
    return t


def message(to: str, body: str) -> ET.Element:
    elem = ET.Element("message", {"to": to, "type": "chat"})
    ET.SubElement(elem, "body").text = body
    return elem


def test_stanzas_become_events_and_keepalives_vanish():
    t = bound()
    t.recv(" \n ")
    t.recv("<message to='bob@example.test' type='chat'><body>hi</body></message> <presence/>")
    first, second = t.facts()
    assert isinstance(first, ev.StanzaReceived) and first.stanza.tag == "message"
    assert first.stanza.find("body").text == "hi" and second.stanza.tag == "presence"
    assert t.sent() == ""


def test_from_must_be_the_bound_jid():
    t = bound()
    t.recv(f"<message from='alice@{DOMAIN}/phone' to='b@{DOMAIN}'/><message from='alice@{DOMAIN}' to='b@{DOMAIN}'/>")
    assert len(t.facts()) == 2
    out = t.recv(f"<message from='bob@{DOMAIN}/x' to='b@{DOMAIN}'/>").sent()
    assert f"<invalid-from xmlns='{STREAMS}'/>" in out


def test_unknown_top_level_element_is_unsupported_stanza_type():
    out = bound().recv("<foo xmlns='urn:x'/>").sent()
    assert f"<unsupported-stanza-type xmlns='{STREAMS}'/>" in out and out.endswith("</stream:stream>")


def test_legacy_session_and_second_bind():
    t = bound()
    t.recv("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    assert t.sent() == "<iq type='result' id='s1'/>"
    t.recv("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert "<not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in t.sent()
    assert t.facts() == []


def test_client_closes_the_stream():
    t = bound()
    assert t.recv("</stream:stream>").sent() == "</stream:stream>"
    assert t.facts() == [ev.StreamClosed(None, by_peer=True)]
    assert t.stream.phase is Phase.CLOSED and t.stream.send_stanza(message("x@d", "late")) == b""


def test_csi_toggles_client_state():
    t = bound()
    t.recv("<inactive xmlns='urn:xmpp:csi:0'/><active xmlns='urn:xmpp:csi:0'/>")
    assert t.facts() == [ev.ClientStateChanged(False), ev.ClientStateChanged(True)]


def test_sm_enable_counts_and_acks():
    t = bound()
    t.recv(f"<enable xmlns='{SM}' resume='true'/>")
    out = t.sent()
    (enabled,) = t.facts()
    assert out == f"<enabled xmlns='{SM}' id='{enabled.resume_id}' resume='true' max='300'/>"
    t.recv("<presence/><message to='b@example.test'/><iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>")
    t.recv(f"<r xmlns='{SM}'/>")
    assert t.sent() == f"<a xmlns='{SM}' h='3'/>"
    for i in range(4):
        assert t.stream.send_stanza(message(f"alice@{DOMAIN}/phone", str(i))).endswith(b"</message>")
    data = t.stream.send_stanza(message(f"alice@{DOMAIN}/phone", "5th"))
    assert data.endswith(f"<r xmlns='{SM}'/>".encode())  # every 5 stanzas we ask
    assert t.stream.request_ack() == b""  # one request outstanding at a time
    t.recv(f"<a xmlns='{SM}' h='3'/>")
    assert t.stream.sm.unacked_count == 2
    assert t.stream.request_ack() == f"<r xmlns='{SM}'/>".encode()


def test_ack_of_more_than_was_sent_ends_the_stream():
    t = bound()
    t.recv(f"<enable xmlns='{SM}'/>")
    t.sent()
    out = t.recv(f"<a xmlns='{SM}' h='5'/>").sent()
    assert f"<undefined-condition xmlns='{STREAMS}'/>" in out and "handled-count-too-high" in out


def test_sm_before_bind_and_r_without_enable_fail_politely():
    t = bound()
    assert t.recv(f"<r xmlns='{SM}'/>").sent() == (
        f"<failed xmlns='{SM}'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    )


def resume_transcript() -> Transcript:
    t = Transcript()
    t.open()
    t.scram_login("alice", "s3cret", keys_for("s3cret"))
    t.call("accept_login")
    t.recv(HEADER)
    t.sent()
    t.facts()
    return t


def test_resume_resends_what_the_client_did_not_ack():
    old = bound()
    old.recv(f"<enable xmlns='{SM}' resume='true'/><presence/><presence/>")
    old.sent()
    (enabled, _, _) = old.facts()
    for body in ("one", "two", "three"):
        old.stream.send_stanza(message(f"alice@{DOMAIN}/phone", body))
    sm = old.stream.sm  # the connection drops here; the adapter keeps `sm`

    new = resume_transcript()
    new.recv(f"<resume xmlns='{SM}' previd='{enabled.resume_id}' h='1'/>")
    assert new.facts() == [ev.ResumeRequested(enabled.resume_id, 1)]
    new.call("resume_accepted", old.stream.jid, sm, 1)
    out = new.sent()
    assert out.startswith(f"<resumed xmlns='{SM}' h='2' previd='{enabled.resume_id}'/>")
    assert "<body>one</body>" not in out and "<body>two</body>" in out and "<body>three</body>" in out
    assert new.facts() == [ev.SessionResumed(old.stream.jid)]
    assert new.stream.phase is Phase.BOUND and new.stream.jid == old.stream.jid
    new.recv(f"<r xmlns='{SM}'/>")
    assert new.sent() == f"<a xmlns='{SM}' h='2'/>"


def test_resume_of_an_unknown_session_fails_and_bind_still_works():
    t = resume_transcript()
    t.recv(f"<resume xmlns='{SM}' previd='nope' h='0'/>")
    t.call("resume_refused")
    assert t.sent() == f"<failed xmlns='{SM}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    t.recv("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert isinstance(t.facts()[-1], ev.BindRequested)
    t.call("bind_done", None)
    assert isinstance(t.facts()[-1], ev.ResourceBound)
