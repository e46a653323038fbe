"""The one recipient rule for a message (RFC 6121 §8.5) and the routed fast path,
on a real `SessionRegistry` (no database, no sockets)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from presence_ha.server.messaging import Outcome, deliver_now, route_message
from presence_ha.server.sessions import Session, SessionKind, SessionRegistry
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import MessageType

BOB = JID.parse("bob@example.test")


def session(registry: SessionRegistry, jid: str, priority: int | None = 0, kind: SessionKind = SessionKind.ACTIVE,
            outbox: list | None = None) -> Session:
    """A bound session; available with `priority` unless that is None."""
    sent = outbox if outbox is not None else []
    s = Session(JID.parse(jid), send=lambda stanza, wire=None: sent.append((stanza, wire)), kind=kind)
    s.available, s.priority = priority is not None, priority or 0
    registry.add(s)
    return s


def names(route) -> list[str]:
    return sorted(s.jid.resource for s in route[1])


def test_a_full_jid_of_an_active_session_gets_any_type():
    reg = SessionRegistry()
    session(reg, "bob@example.test/pc", priority=None)  # not even available
    for kind in MessageType:
        route = route_message(reg, JID.parse("bob@example.test/pc"), kind)
        assert (route[0], names(route)) == (Outcome.TO_RESOURCE, ["pc"]), kind


def test_bare_jid_chat_and_normal_go_to_the_highest_priority_headline_to_all_non_negative():
    reg = SessionRegistry()
    session(reg, "bob@example.test/low", 1)
    session(reg, "bob@example.test/high", 7)
    session(reg, "bob@example.test/high2", 7)
    session(reg, "bob@example.test/neg", -1)
    session(reg, "bob@example.test/away", None)
    for kind in (MessageType.CHAT, MessageType.NORMAL):
        route = route_message(reg, BOB, kind)
        assert (route[0], names(route)) == (Outcome.TO_ACCOUNT, ["high", "high2"])
    route = route_message(reg, BOB, MessageType.HEADLINE)
    assert (route[0], names(route)) == (Outcome.TO_ACCOUNT, ["high", "high2", "low"])


def test_a_full_jid_without_its_session_falls_back_to_the_bare_jid_for_chat_and_normal_only():
    reg = SessionRegistry()
    session(reg, "bob@example.test/pc", 0)
    session(reg, "bob@example.test/backup", 0, SessionKind.INACTIVE)
    for resource in ("gone", "backup"):  # an inactive session is never addressed
        to = JID.parse(f"bob@example.test/{resource}")
        assert names(route_message(reg, to, MessageType.CHAT)) == ["pc"]
        assert route_message(reg, to, MessageType.NORMAL)[0] is Outcome.TO_ACCOUNT
        assert route_message(reg, to, MessageType.HEADLINE)[0] is Outcome.DROP
        assert route_message(reg, to, MessageType.GROUPCHAT)[0] is Outcome.REFUSE
        assert route_message(reg, to, MessageType.ERROR)[0] is Outcome.DROP


@pytest.mark.parametrize(("kind", "outcome"), [
    (MessageType.CHAT, Outcome.STORE), (MessageType.NORMAL, Outcome.STORE), (MessageType.HEADLINE, Outcome.DROP),
    (MessageType.GROUPCHAT, Outcome.REFUSE), (MessageType.ERROR, Outcome.DROP),
])
def test_no_session_of_non_negative_priority(kind, outcome):
    reg = SessionRegistry()
    session(reg, "bob@example.test/neg", -5)
    session(reg, "bob@example.test/backup", 3, SessionKind.INACTIVE)
    route = route_message(reg, BOB, kind)
    assert route == (outcome, [])


def message(text: str) -> ET.Element:
    return ET.fromstring(text)


def test_deliver_now_sends_the_wire_bytes_to_what_the_rule_picks():
    reg, high, low = SessionRegistry(), [], []
    session(reg, "bob@example.test/high", 5, outbox=high)
    session(reg, "bob@example.test/low", 1, outbox=low)
    stanza = message("<message to='bob@example.test' type='chat'><body>x</body></message>")
    assert deliver_now(SimpleNamespace(sessions=reg), stanza, BOB, b"<wire/>")
    assert high == [(stanza, b"<wire/>")] and low == []


@pytest.mark.parametrize(("text", "to"), [
    ("<message type='groupchat'/>", "bob@example.test"),
    ("<message type='error'/>", "bob@example.test"),
    ("<message type='nonsense'><body>x</body></message>", "bob@example.test"),  # normal, via the full path
    ("<message type='chat'><body>x</body></message>", "bob@example.test/gone"),  # the fallback is the full path's
    ("<message type='headline'/>", "bob@example.test/gone"),
    ("<message type='chat'><body>x</body></message>", "carol@example.test"),  # nobody here: offline storage
])
def test_deliver_now_leaves_everything_but_the_common_case(text, to):
    reg, sent = SessionRegistry(), []
    session(reg, "bob@example.test/pc", 0, outbox=sent)
    assert deliver_now(SimpleNamespace(sessions=reg), message(text), JID.parse(to), b"") is False
    assert sent == []


def test_deliver_now_leaves_an_account_with_carbons_to_the_full_path():
    reg, sent = SessionRegistry(), []
    session(reg, "bob@example.test/pc", 0, outbox=sent)
    session(reg, "bob@example.test/phone", -1).carbons = True
    stanza = message("<message type='chat'><body>x</body></message>")
    assert deliver_now(SimpleNamespace(sessions=reg), stanza, BOB, b"") is False
    assert sent == []
