"""XEP-0191's rule (`server.blocking`): which JIDs an item matches, and what happens to
stanzas from and to them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.blocking import NS_BLOCKING_ERRORS, Verdict, error_of, inbound, is_blocked, outbound
from presence_ha.server.xmpp.errors import Condition
from presence_ha.server.xmpp.jid import JID


@pytest.mark.parametrize(("item", "jid", "blocked"), [
    ("bob@x.test", "bob@x.test", True),
    ("bob@x.test", "bob@x.test/phone", True),  # a bare JID: every resource
    ("bob@x.test/phone", "bob@x.test/phone", True),
    ("bob@x.test/phone", "bob@x.test/pc", False),  # a full JID: that resource only
    ("bob@x.test/phone", "bob@x.test", False),
    ("x.test", "bob@x.test/pc", True),  # a domain: everyone there
    ("x.test", "x.test", True),
    ("x.test", "x.test/admin", True),
    ("x.test/admin", "x.test/admin", True),
    ("x.test/admin", "x.test", False),
    ("x.test/admin", "bob@x.test/admin", False),
    ("bob@x.test", "bobby@x.test", False),
    ("bob@x.test", "bob@y.test", False),
    ("y.test", "bob@x.test", False),
])
def test_items_match_as_xep_0016_says(item, jid, blocked):
    assert is_blocked(frozenset({item}), JID.parse(jid)) is blocked


def stanza(text: str) -> ET.Element:
    return ET.fromstring(text)


BOB = JID.parse("bob@x.test/pc")
ITEMS = frozenset({"bob@x.test"})


@pytest.mark.parametrize(("text", "verdict"), [
    ("<message type='chat'><body>hi</body></message>", Verdict.REFUSE),
    ("<message/>", Verdict.REFUSE),
    ("<message type='error'/>", Verdict.DROP),
    ("<presence/>", Verdict.DROP),
    ("<presence type='probe'/>", Verdict.DROP),
    ("<presence type='subscribe'/>", Verdict.DROP),
    ("<iq type='get'><q xmlns='x'/></iq>", Verdict.REFUSE),
    ("<iq type='set'><q xmlns='x'/></iq>", Verdict.REFUSE),
    ("<iq type='result'/>", Verdict.DROP),
    ("<iq type='error'/>", Verdict.DROP),
])
def test_what_a_blocked_sender_gets(text, verdict):
    assert inbound(ITEMS, BOB, stanza(text)) is verdict
    assert inbound(ITEMS, JID.parse("carol@x.test/c"), stanza(text)) is Verdict.PASS
    assert inbound(frozenset(), BOB, stanza(text)) is Verdict.PASS
    assert inbound(ITEMS, None, stanza(text)) is Verdict.PASS


@pytest.mark.parametrize(("text", "verdict"), [
    ("<message type='chat'><body>hi</body></message>", Verdict.BLOCKED),
    ("<presence/>", Verdict.BLOCKED),  # directed presence
    ("<presence type='subscribe'/>", Verdict.BLOCKED),
    ("<iq type='get'><q xmlns='x'/></iq>", Verdict.BLOCKED),
    ("<iq type='result'/>", Verdict.DROP),
    ("<message type='error'/>", Verdict.DROP),
])
def test_what_the_user_gets_for_writing_to_a_blocked_jid(text, verdict):
    assert outbound(ITEMS, BOB, stanza(text)) is verdict
    assert outbound(ITEMS, JID.parse("carol@x.test"), stanza(text)) is Verdict.PASS


def test_the_errors_of_the_verdicts():
    blocked = error_of(Verdict.BLOCKED)
    assert blocked is not None and blocked.condition is Condition.NOT_ACCEPTABLE
    assert blocked.to_element().find(f"{{{NS_BLOCKING_ERRORS}}}blocked") is not None
    refused = error_of(Verdict.REFUSE)
    assert refused is not None and refused.condition is Condition.SERVICE_UNAVAILABLE
    assert error_of(Verdict.DROP) is None and error_of(Verdict.PASS) is None
