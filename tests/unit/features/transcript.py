"""XML transcripts for feature tests (SlixTest style): clients send text, expect text.

Rules:
- A `World` is a real `Router` with the IM feature modules registered, a real
  `SessionRegistry`, and a real `Store` over a temporary SQLite database made with
  `db.models.metadata.create_all`. Nothing is mocked; only the socket is replaced by
  an outbox list per session.
- `Client.expect(xml)` pops the next stanza the client received and compares it with
  `xml`: same tag, same attributes (value "*" matches anything), same children in
  order, same stripped text. Mismatches fail with both documents printed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from types import SimpleNamespace

from sqlalchemy import insert

from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.db.hotpath import HotPath
from presence_ha.db.models import Cluster, Node, User, metadata
from presence_ha.server.config import QuotasConfig
from presence_ha.server.context import FeatureContext
from presence_ha.server.features import carbons, disco, mam, message, pep, presence, roster, subscription
from presence_ha.server.router import Router, SessionBound, SessionClosed
from presence_ha.server.sessions import Session, SessionKind, SessionRegistry
from presence_ha.server.store import Store
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import serialize

DOMAIN = "example.test"
USERS = ("alice", "bob", "carol", "dave")
MODULES = (roster, subscription, presence, message, carbons, disco, pep, mam)


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


def parse(text: str) -> ET.Element:
    """Like the stream parser: `jabber:client` names come out unqualified."""
    root = ET.fromstring(text)
    for elem in root.iter():
        if elem.tag.startswith("{jabber:client}"):
            elem.tag = elem.tag[len("{jabber:client}"):]
    return root


def mismatch(expected: ET.Element, actual: ET.Element) -> str | None:
    """Why `actual` does not match `expected`, or None."""
    if expected.tag != actual.tag:
        return f"tag {actual.tag!r} != {expected.tag!r}"
    if set(expected.attrib) != set(actual.attrib):
        return f"attributes {sorted(actual.attrib)} != {sorted(expected.attrib)} on <{actual.tag}>"
    for key, value in expected.attrib.items():
        if value != "*" and actual.get(key) != value:
            return f"{key}={actual.get(key)!r} != {value!r} on <{actual.tag}>"
    if (expected.text or "").strip() not in ("*", (actual.text or "").strip()):
        return f"text {actual.text!r} != {expected.text!r} in <{actual.tag}>"
    if len(expected) != len(actual):
        return f"<{actual.tag}> has {len(actual)} children, expected {len(expected)}"
    for exp_child, act_child in zip(expected, actual, strict=True):
        why = mismatch(exp_child, act_child)
        if why:
            return why
    return None


@dataclass
class Client:
    world: World
    session: Session
    outbox: list[ET.Element] = field(default_factory=list)
    wires: list[bytes | None] = field(default_factory=list)  # `Session.send`'s `wire`, per stanza

    @property
    def jid(self) -> JID:
        return self.session.jid

    async def send(self, text: str) -> None:
        await self.world.router.dispatch(self.world.ctx, self.session, parse(text))

    def expect(self, text: str) -> ET.Element:
        assert self.outbox, f"{self.jid} received nothing, expected {text}"
        actual = self.outbox.pop(0)
        why = mismatch(parse(text), actual)
        assert why is None, f"{self.jid}: {why}\n got:      {serialize(actual)}\n expected: {text}"
        return actual

    def expect_unordered(self, *texts: str) -> None:
        """The next len(texts) stanzas, in any order."""
        got, self.outbox = self.outbox[: len(texts)], self.outbox[len(texts):]
        assert len(got) == len(texts), f"{self.jid} got {[serialize(g) for g in got]}"
        for text in texts:
            hits = [g for g in got if mismatch(parse(text), g) is None]
            assert hits, f"{self.jid}: no match for {text} in {[serialize(g) for g in got]}"
            got.remove(hits[0])

    def silent(self) -> None:
        assert not self.outbox, f"{self.jid} got unexpected {[serialize(s) for s in self.outbox]}"

    async def close(self) -> None:
        self.world.sessions.remove(self.session)
        await self.world.router.notify(self.world.ctx, SessionClosed(self.session, graceful=True))


class World:
    def __init__(self, ctx: FeatureContext, engine, hot: HotPath) -> None:
        self.ctx = ctx
        self.hot = hot
        self.router: Router = ctx.router
        self.sessions: SessionRegistry = ctx.sessions
        self.store: Store = ctx.store
        self.engine = engine

    async def close(self) -> None:
        await self.hot.dispose()
        await self.engine.dispose()

    async def connect(self, jid: str, *, kind: SessionKind = SessionKind.ACTIVE) -> Client:
        client = Client(self, Session(JID.parse(jid), send=lambda s: None, kind=kind))
        def send(stanza: ET.Element, wire: bytes | None = None) -> None:
            client.outbox.append(stanza)
            client.wires.append(wire)

        client.session.send = send
        self.sessions.add(client.session)
        await self.router.notify(self.ctx, SessionBound(client.session))
        return client

    async def online(self, jid: str, presence: str = "<presence/>", *, roster: bool = True) -> Client:
        """Connected, roster fetched, initial presence sent, outbox emptied."""
        client = await self.connect(jid)
        if roster:
            await client.send("<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>")
        await client.send(presence)
        client.outbox.clear()
        return client


async def make_world(db_path, *, offline_limit: int = 3, quotas: QuotasConfig | None = None, modules=MODULES,
                     guard=None) -> World:
    quotas = quotas or QuotasConfig(offline_max_messages=offline_limit)
    engine = make_engine(f"sqlite:///{db_path}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        inserted = await conn.execute(insert(Cluster).values(name="c1", domain=DOMAIN, secret="s"))
        cluster = inserted.inserted_primary_key[0]
        await conn.execute(insert(Node).values(
            cluster_id=cluster, name="n1", software_version="1", client_port=1, srm_port=2, admin_port=3,
            link_port=4, metrics_port=5,
        ))
        await conn.execute(insert(User), [{"cluster_id": cluster, "username": name} for name in USERS])
    hot = HotPath(f"sqlite:///{db_path}")
    router = Router(None, guard)
    for module in modules:
        module.register(router)
    ctx = FeatureContext(
        domain=DOMAIN, node_name="n1", router=router, sessions=SessionRegistry(),
        store=Store(make_session_factory(engine), hot, DOMAIN, node_name="n1", quotas=quotas),
        metrics=SimpleNamespace(handler_errors=Counter()),
        settings=SimpleNamespace(quotas=quotas),
    )
    return World(ctx, engine, hot)
