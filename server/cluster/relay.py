"""Relayed sessions: a client dialled one node, its account is served by another.

Rules of this module:
- The dialled node keeps the client's TCP/TLS stream (`RelayDialer`); after bind it
  asks the active node (CONTROL `open`) to create the session, then forwards the
  client's stanzas upstream (`U <sid>` frames) and writes downstream frames (`D <sid>`)
  to the client. The client notices nothing.
- The active node (`RelayHost`) holds a `Session` in its `SessionRegistry` whose
  `send` posts downstream frames: the session lives, is counted and routed there like
  a local one. It admits the session only if the database says it serves the account
  now and its SRM agrees (`LoginAdmission`), and binds it through the client port
  (`HostedBinder`: a session replaces one of the same full JID wherever its client is).
- The hosted sessions themselves are `HostedSessions`, built before the client port
  (which ends them with its own: `close_sessions`, shutdown); `RelayHost`, built
  after the port, opens them and feeds them their client's stanzas.
- Either side ends a relayed session with one CONTROL: `closed` (the client's stream
  ended) or `close` (the active node ends it; the stream error travels with it). A
  peer process that restarted, or stayed unreachable for `timeout_s`, ends every
  relayed session shared with it: on the active node as an ungraceful close (its
  contacts get unavailable presence), on the dialled node by ending the stream.
- A downstream backlog that is full ends the session, as c2s does with a client
  that stops reading.
- A takeover (the SRM moved users HERE while their host is unreachable, the host
  being the node that died): the relayed connections of those users become local
  sessions on the same client stream (`RelayDialer.take_over`, deciding with the pure
  `to_take_over`); the client notices nothing but a pause. What such a connection
  sent that the dead host never acknowledged is replayed here (`replay_upstream`).
  A host that is alive ends its hosted sessions itself (failed over: its port closes
  them; unreachable: `timeout_s`), so nothing is sent to it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from presence_ha.server.admission import Gate, LoginAdmission, ServiceSwitch, when_presence_stopped
from presence_ha.server.cluster import wire
from presence_ha.server.cluster.links import LinkMesh
from presence_ha.server.cluster.locations import LocationCache
from presence_ha.server.context import FeatureContext
from presence_ha.server.link import Kind
from presence_ha.server.router import SessionBound, SessionClosed
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError, StreamCondition, StreamError, error_reply
from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition

log = logging.getLogger(__name__)


class HostedBinder(Protocol):
    """Registers a session whose client is connected to another node (`ClientPort`)."""

    async def bind_relayed(self, session: Session) -> None: ...
    async def bind_refusal(self, jid: JID) -> StanzaError | None: ...


class ClientConnection(Protocol):
    """What the dialer needs of a c2s connection."""

    def send_stanza(self, stanza: ET.Element) -> None: ...
    def kick_soon(self, error: StreamError | None) -> None: ...
    async def become_local(self) -> Session | None: ...
    def replay(self, stanza: ET.Element) -> None: ...


@dataclass(frozen=True, slots=True)
class Relayed:
    """One relayed connection, as `to_take_over` sees it."""

    sid: str
    node: str  # its host
    username: str


def to_take_over(relayed: Iterable[Relayed], served_here: Collection[str], unreachable: Collection[str]) -> list[str]:
    """The relayed connections that become local sessions after a takeover: their user
    is served here now and their host is unreachable (it died: its hosted session is
    gone with it). A host that lives ends its own hosted sessions (the client is then
    told why); a user served elsewhere stays relayed."""
    return [r.sid for r in relayed if r.username in served_here and r.node in unreachable]


@dataclass(eq=False)
class RelayedStream:
    """The dialled node's handle on one relayed connection (c2s `Connection.relay`)."""

    sid: str
    node: str
    jid: JID
    dialer: RelayDialer

    async def forward(self, stanza: ET.Element) -> None:
        await self.dialer.forward(self, stanza)

    async def finish(self, graceful: bool) -> None:
        self.dialer.finish(self, graceful)


class RelayDialer:
    def __init__(self, mesh: LinkMesh, grace_s: float = 3.0, open_timeout_s: float = 10.0) -> None:
        self.mesh, self.grace_s, self.open_timeout_s = mesh, grace_s, open_timeout_s
        self._conns: dict[str, tuple[ClientConnection, str, str]] = {}  # sid -> (connection, node, username)
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        self._local: dict[str, ClientConnection] = {}  # sid -> connections taken over, until replayed

    def refusal(self, username: str, node: str) -> SaslFailure | None:
        """None if `node` can be reached to host `username`'s session."""
        if self.mesh.channel(node) is not None and self.mesh.unreachable_for(node) <= self.grace_s:
            return None
        return SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE,
                           f"node {node} serving {username} is unreachable; retry later")

    async def open(self, connection: ClientConnection, jid: JID, node: str) -> RelayedStream | StreamError:
        channel = self.mesh.channel(node)
        if channel is None:
            return StreamError(StreamCondition.INTERNAL_SERVER_ERROR, f"unknown node {node}")
        sid = secrets.token_hex(8)
        waiter = self._pending[sid] = asyncio.get_running_loop().create_future()
        self._conns[sid] = (connection, node, jid.local or "")
        try:
            await channel.send(Kind.CONTROL, wire.encode_control(wire.Op.OPEN, sid=sid, jid=str(jid)))
            reason = await asyncio.wait_for(waiter, self.open_timeout_s)
        except TimeoutError:
            reason = f"node {node} did not answer in time"
            channel.post(Kind.CONTROL, wire.encode_control(wire.Op.CLOSED, sid=sid, graceful=False))
        finally:
            self._pending.pop(sid, None)
        if reason is not None:
            self._conns.pop(sid, None)
            log.info("relay of %s to %s refused: %s", jid, node, reason)
            return StreamError(StreamCondition.RESET, reason)
        log.info("%s relayed to node %s (sid %s)", jid, node, sid)
        return RelayedStream(sid, node, jid, self)

    async def forward(self, stream: RelayedStream, stanza: ET.Element) -> None:
        channel = self.mesh.channel(stream.node)
        assert channel is not None
        await channel.send(Kind.STANZA, wire.encode_session(stream.sid, stanza, upstream=True))

    def finish(self, stream: RelayedStream, graceful: bool) -> None:
        if self._conns.pop(stream.sid, None) is None:
            return
        channel = self.mesh.channel(stream.node)
        if channel is not None:
            channel.post(Kind.CONTROL, wire.encode_control(wire.Op.CLOSED, sid=stream.sid, graceful=graceful))

    # -- from the active node --------------------------------------------------------
    def answered(self, sid: str, reason: str | None) -> None:
        waiter = self._pending.get(sid)
        if waiter is not None and not waiter.done():
            waiter.set_result(reason)

    def downstream(self, sid: str, stanza: ET.Element) -> None:
        entry = self._conns.get(sid)
        if entry is not None:
            entry[0].send_stanza(stanza)

    def closed_by_host(self, sid: str, control: wire.Control) -> None:
        entry = self._conns.pop(sid, None)
        if entry is None:
            return
        try:
            condition = StreamCondition(control.text("condition", "system-shutdown"))
        except ValueError:
            condition = StreamCondition.SYSTEM_SHUTDOWN
        entry[0].kick_soon(StreamError(condition, control.text("text"), other_host=control.text("other_host")))

    def peer_lost(self, node: str, why: str) -> None:
        for sid, (connection, target, _user) in list(self._conns.items()):
            if target == node:
                del self._conns[sid]
                connection.kick_soon(StreamError(StreamCondition.SYSTEM_SHUTDOWN, f"node {node} {why}"))

    def count(self) -> int:
        return len(self._conns)

    # -- a takeover (server.cluster.service) -------------------------------------------
    async def take_over(self, served_here: Collection[str]) -> list[Session]:
        """The relayed connections of users served here now, whose host is unreachable,
        become local sessions on their client streams (`to_take_over`); returns the
        sessions, bound here (their presence is the caller's)."""
        relayed = [Relayed(sid, node, user) for sid, (_c, node, user) in self._conns.items()]
        unreachable = {r.node for r in relayed if self.mesh.unreachable_for(r.node) > 0}
        sessions = []
        for sid in to_take_over(relayed, served_here, unreachable):
            entry = self._conns.pop(sid, None)
            if entry is None:
                continue  # ended meanwhile
            self._local[sid] = entry[0]
            session = await entry[0].become_local()
            if session is not None:
                sessions.append(session)
            else:  # still opening, or ending: it stays what it was
                self._local.pop(sid, None)
                self._conns.setdefault(sid, entry)
        return sessions

    def replay_upstream(self, sid: str, stanza: ET.Element) -> bool:
        """A stanza taken back from an unreachable host (`channel.reclaim`): if its
        connection was taken over, it is handled here as if just received. True if so."""
        connection = self._local.get(sid)
        if connection is None:
            return False
        connection.replay(stanza)
        return True

    def replayed(self) -> None:
        """What the dead hosts never acknowledged was taken back: forget the sids."""
        self._local.clear()


class HostedSessions:
    """The sessions this node hosts for clients connected to other nodes, by (peer, sid)."""

    def __init__(self, ctx: FeatureContext, mesh: LinkMesh) -> None:
        self.ctx, self.mesh = ctx, mesh
        self._sessions: dict[tuple[str, str], Session] = {}

    def get(self, peer: str, sid: str) -> Session | None:
        return self._sessions.get((peer, sid))

    def add(self, peer: str, sid: str, jid: JID) -> Session:
        session = Session(jid=jid, send=lambda s, wire=None: self._down(peer, sid, s, wire),
                          close=lambda: self._closed_here(peer, sid))
        self._sessions[(peer, sid)] = session
        return session

    async def closed(self, peer: str, sid: str, graceful: bool) -> None:
        session = self._sessions.pop((peer, sid), None)
        if session is not None:
            await self._end(session, graceful)

    async def _end(self, session: Session, graceful: bool) -> None:
        self.ctx.sessions.remove(session)
        await self.ctx.notify(SessionClosed(session, graceful))

    def _down(self, peer: str, sid: str, stanza: ET.Element, body: bytes | None = None) -> None:
        channel = self.mesh.channel(peer)
        assert channel is not None
        if not channel.post(Kind.STANZA, wire.encode_session(sid, stanza, upstream=False, body=body)):
            session = self._sessions.get((peer, sid))
            if session is not None:
                asyncio.get_running_loop().create_task(self.close_one(peer, sid, None))

    def _closed_here(self, peer: str, sid: str) -> None:
        """`Session.close()`: the server ends it (its SessionClosed is the caller's)."""
        session = self._sessions.pop((peer, sid), None)
        if session is None:
            return
        replaced = self.ctx.sessions.get(session.jid) is not session
        condition = StreamCondition.CONFLICT if replaced else StreamCondition.SYSTEM_SHUTDOWN
        self._send_close(peer, sid, StreamError(condition, "session closed by the server"))

    def _send_close(self, peer: str, sid: str, error: StreamError | None) -> None:
        fields: dict[str, Any] = {"sid": sid}
        if error is not None:
            fields.update(condition=error.condition.value, text=error.text, other_host=error.other_host)
        channel = self.mesh.channel(peer)
        assert channel is not None
        channel.post(Kind.CONTROL, wire.encode_control(wire.Op.CLOSE, **fields))

    async def close_one(self, peer: str, sid: str, error: StreamError | None) -> None:
        session = self._sessions.pop((peer, sid), None)
        if session is not None:
            await self._end(session, graceful=True)
            self._send_close(peer, sid, error)

    async def close_sessions(self, chosen: Callable[[Session], bool],
                             error_for: Callable[[str], StreamError | None]) -> int:
        """End the chosen relayed sessions (the SRM, a stopping node); how many."""
        keys = [key for key, session in self._sessions.items() if chosen(session)]
        for peer, sid in keys:
            session = self._sessions.get((peer, sid))
            if session is not None:
                await self.close_one(peer, sid, error_for(session.jid.local or ""))
        return len(keys)

    def of_peer(self, peer: str) -> dict[str, Session]:
        """`{sid: session}` of the sessions hosted for clients connected to `peer`."""
        return {sid: session for (name, sid), session in self._sessions.items() if name == peer}

    def forget(self, peer: str, sid: str) -> None:
        """No longer a relayed session (its stream's replica took it: `SmReplication.park`)."""
        self._sessions.pop((peer, sid), None)

    async def peer_lost(self, peer: str) -> None:
        for key in [key for key in self._sessions if key[0] == peer]:
            session = self._sessions.pop(key, None)
            if session is not None:
                await self._end(session, graceful=False)

    def count(self) -> int:
        return len(self._sessions)


class RelayHost:
    """Opens hosted sessions on a peer's request and feeds them their client's stanzas."""

    def __init__(self, ctx: FeatureContext, sessions: HostedSessions, binder: HostedBinder, mesh: LinkMesh,
                 locations: LocationCache, admission: LoginAdmission | None, presence: ServiceSwitch) -> None:
        self.ctx, self.sessions, self.binder, self.mesh = ctx, sessions, binder, mesh
        self.locations, self.admission, self.presence = locations, admission, presence

    async def open(self, peer: str, control: wire.Control) -> None:
        sid = control.text("sid") or ""
        try:
            jid: JID | None = JID.parse(control.text("jid") or "")
        except InvalidJid:
            jid = None
        if jid is None or jid.is_bare or jid.domain != self.ctx.domain:
            refusal: str | None = "bad session address"
        else:
            refusal = await self._refusal(jid)
        channel = self.mesh.channel(peer)
        assert channel is not None
        if refusal is not None or jid is None:
            channel.post(Kind.CONTROL, wire.encode_control(wire.Op.REFUSED, sid=sid, reason=refusal))
            return
        session = self.sessions.add(peer, sid, jid)
        channel.post(Kind.CONTROL, wire.encode_control(wire.Op.OPENED, sid=sid))
        await self.binder.bind_relayed(session)
        await self.ctx.notify(SessionBound(session))
        log.info("%s bound here through node %s (sid %s)", jid, peer, sid)

    async def _refusal(self, jid: JID) -> str | None:
        node = await self.locations.read_fresh(jid.local or "")
        if node != self.ctx.node_name:
            return f"{jid.bare} is served by {node}, not {self.ctx.node_name}"
        over = await self.binder.bind_refusal(jid)  # the account's resources here (server.quotas)
        if over is not None:
            return over.text or over.condition.tag
        verdict = await self.admission(jid.local or "") if self.admission is not None else None
        return str(verdict) if verdict is not None else None

    async def upstream(self, peer: str, sid: str, stanza: ET.Element) -> None:
        session = self.sessions.get(peer, sid)
        if session is None:
            return  # the session ended while the stanza travelled
        if not self.presence.on:
            gate = when_presence_stopped(stanza.tag, stanza.get("type"))
            if gate is Gate.BOUNCE:
                session.send(error_reply(stanza, StanzaError(Condition.SERVICE_UNAVAILABLE, "presence engine stopped")))
            if gate is not Gate.PASS:
                return
        await self.ctx.router.dispatch(self.ctx, session, stanza)

    async def closed(self, peer: str, sid: str, graceful: bool) -> None:
        await self.sessions.closed(peer, sid, graceful)

    async def peer_lost(self, peer: str) -> None:
        await self.sessions.peer_lost(peer)

    def count(self) -> int:
        return self.sessions.count()
