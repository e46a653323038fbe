"""The router as XML transcripts: typed routes, error stanzas, isolation of failures."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from presence_ha.server.context import FeatureContext
from presence_ha.server.router import DuplicateRoute, IqType, Router
from presence_ha.server.sessions import Session, SessionRegistry
from presence_ha.server.xmpp.errors import Condition, StanzaError
from presence_ha.server.xmpp.jid import JID

NS_STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


def make_session(jid: str) -> tuple[Session, list[ET.Element]]:
    sent: list[ET.Element] = []
    return Session(jid=JID.parse(jid), send=sent.append), sent


@pytest.fixture
def world():
    router = Router()
    registry = SessionRegistry()
    ctx = FeatureContext(
        domain="example.test", node_name="n1", router=router, sessions=registry,
        store=None, metrics=SimpleNamespace(handler_errors=Counter()), settings=None,
    )
    alice, alice_out = make_session("alice@example.test/phone")
    bob, bob_out = make_session("bob@example.test/pc")
    registry.add(alice)
    registry.add(bob)
    return SimpleNamespace(router=router, ctx=ctx, alice=alice, alice_out=alice_out, bob=bob, bob_out=bob_out)


def xml(text: str) -> ET.Element:
    return ET.fromstring(text)


async def test_unrouted_iq_get_is_service_unavailable(world):
    await world.router.dispatch(world.ctx, world.alice, xml('<iq type="get" id="1"><q xmlns="urn:x:unknown"/></iq>'))
    (reply,) = world.alice_out
    assert reply.get("type") == "error" and reply.get("id") == "1"
    assert reply.find(f"error/{NS_STANZAS}service-unavailable") is not None
    assert reply.get("to") == "alice@example.test/phone"


async def test_routed_iq_returns_payload(world):
    @world.router.iq(IqType.GET, "{urn:xmpp:ping}ping")
    async def ping(ctx, session, stanza):
        return None

    request = xml('<iq type="get" id="p1" to="example.test"><ping xmlns="urn:xmpp:ping"/></iq>')
    await world.router.dispatch(world.ctx, world.alice, request)
    (reply,) = world.alice_out
    assert (reply.get("type"), reply.get("id"), reply.get("from")) == ("result", "p1", "example.test")


async def test_handler_stanza_error_and_crash_are_isolated(world):
    @world.router.iq(IqType.SET, "{urn:x:a}a")
    async def refuses(ctx, session, stanza):
        raise StanzaError(Condition.NOT_ALLOWED, "no")

    @world.router.iq(IqType.SET, "{urn:x:b}b")
    async def crashes(ctx, session, stanza):
        raise RuntimeError("bug")

    await world.router.dispatch(world.ctx, world.alice, xml('<iq type="set" id="a"><a xmlns="urn:x:a"/></iq>'))
    await world.router.dispatch(world.ctx, world.alice, xml('<iq type="set" id="b"><b xmlns="urn:x:b"/></iq>'))
    first, second = world.alice_out
    assert first.find(f"error/{NS_STANZAS}not-allowed") is not None
    assert second.find(f"error/{NS_STANZAS}internal-server-error") is not None
    assert world.ctx.metrics.handler_errors.value == 1
    assert world.bob_out == []


async def test_iq_to_full_jid_is_delivered_and_from_is_stamped(world):
    spoofed = xml('<iq type="get" id="v" to="bob@example.test/pc" from="mallory@evil">'
                  '<q xmlns="jabber:iq:version"/></iq>')
    await world.router.dispatch(world.ctx, world.alice, spoofed)
    (got,) = world.bob_out
    assert got.get("from") == "alice@example.test/phone"


async def test_iq_to_offline_full_jid_and_bad_jid(world):
    version_query = '<q xmlns="jabber:iq:version"/></iq>'
    await world.router.dispatch(world.ctx, world.alice,
                                xml('<iq type="get" id="x" to="carol@example.test/r">' + version_query))
    await world.router.dispatch(world.ctx, world.alice, xml('<iq type="get" id="y" to="a@b@c">' + version_query))
    await world.router.dispatch(world.ctx, world.alice, xml('<message to="bob@other.test"><body>hi</body></message>'))
    conds = [r.find("error")[0].tag.split("}")[1] for r in world.alice_out]
    assert conds == ["service-unavailable", "jid-malformed", "remote-server-not-found"]


def test_duplicate_route_is_refused():
    router = Router()

    @router.iq(IqType.GET, "{urn:xmpp:ping}ping")
    async def one(ctx, session, stanza):
        return None

    with pytest.raises(DuplicateRoute):
        router.iq(IqType.GET, "{urn:xmpp:ping}ping")(one)


class RemoteNode:
    """A remote route given at construction: takes stanzas for carol, raises for dave."""

    def __init__(self) -> None:
        self.taken: list[ET.Element] = []

    async def route(self, ctx, stanza, to, sender) -> bool:
        if to.local == "dave":
            raise StanzaError(Condition.RECIPIENT_UNAVAILABLE, "node unreachable")
        if to.local != "carol":
            return False
        self.taken.append(stanza)
        return True


async def test_the_remote_route_given_at_construction_takes_other_nodes_accounts(world):
    remote = RemoteNode()
    router = Router(remote)
    ctx = FeatureContext(domain="example.test", node_name="n1", router=router, sessions=world.ctx.sessions,
                         store=None, metrics=SimpleNamespace(handler_errors=Counter()), settings=None)
    await router.dispatch(ctx, world.alice,
                          xml('<iq type="get" id="1" to="carol@example.test/x"><q xmlns="urn:x"/></iq>'))
    await router.dispatch(ctx, world.alice,
                          xml('<iq type="get" id="2" to="dave@example.test/x"><q xmlns="urn:x"/></iq>'))
    await router.deliver(ctx, xml('<iq type="get" id="3" from="bob@example.test/pc" to="carol@example.test/x"/>'),
                         route_remote=False)
    assert [s.get("id") for s in remote.taken] == ["1"]
    (error,) = world.alice_out
    assert error.get("id") == "2" and error.find(f"error/{NS_STANZAS}recipient-unavailable") is not None
