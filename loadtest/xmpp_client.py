"""A lean asyncio XMPP client for load generation (RFC 6120/6121 client subset).

Rules:
- `StanzaReader` is the sans-IO part: bytes in, `StreamOpened` / stanza `Element` /
  `StreamClosed` out. It is built on xml.etree's XMLPullParser (expat) and keeps no
  finished stanza in memory.
- `XmppClient` only moves bytes: connect, optional STARTTLS (self-signed accepted: this is
  a benchmark, not a security boundary), SASL PLAIN or SCRAM-SHA-1/-256 via scramp,
  resource bind, legacy session when required, optional XEP-0198 enable. After login a
  reader task answers IQ results, SM ack requests and roster pushes itself, and hands
  every other stanza to the `on_stanza` callback.
- Stanzas are written as strings: building ElementTrees on the send path would cost more
  than the server work being measured.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import logging
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast
from xml.sax.saxutils import escape, quoteattr

import scramp

log = logging.getLogger(__name__)

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_SM = "urn:xmpp:sm:3"
NS_ROSTER = "jabber:iq:roster"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MECHANISMS = ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256")
_ids = itertools.count()


class XmppError(Exception):
    """Login or stream failure (the peer's fault or a timeout), with a short reason.

    `condition`: the SASL failure or stream error condition when the server gave one;
    `other_host`: the `host:port` of a `see-other-host` stream error (RFC 6120 §4.9.3.19).
    """

    def __init__(self, message: str, condition: str | None = None, other_host: str | None = None) -> None:
        super().__init__(message)
        self.condition = condition
        self.other_host = other_host


@dataclass(frozen=True)
class StreamOpened:
    """The peer's <stream:stream> header."""

    attrs: dict[str, str]


@dataclass(frozen=True)
class StreamClosed:
    """The peer's </stream:stream>."""


@dataclass(frozen=True)
class RosterItem:
    """One roster entry as reported by a roster get (RFC 6121 §2.1.2)."""

    jid: str
    subscription: str
    ask: str | None = None


class StanzaReader:
    """Sans-IO stream reader: feed bytes, get stream events and top-level elements."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Start a fresh XML document (after STARTTLS or SASL success, RFC 6120 §4.3.3)."""
        self._parser: ET.XMLPullParser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._root: ET.Element | None = None

    def feed(self, data: bytes) -> list[StreamOpened | StreamClosed | ET.Element]:
        """Parse `data`; return the complete events it finished, in order."""
        self._parser.feed(data)
        out: list[StreamOpened | StreamClosed | ET.Element] = []
        # only "start" and "end" were asked for: every event carries an element
        events = cast(Iterator[tuple[str, ET.Element]], self._parser.read_events())
        for event, elem in events:
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self._root = elem
                    out.append(StreamOpened(dict(elem.attrib)))
                continue
            self._depth -= 1
            if self._depth == 1:
                out.append(elem)
                if self._root is not None:
                    self._root.remove(elem)  # keep memory flat on long streams
            elif self._depth == 0:
                out.append(StreamClosed())
        return out


def local_tag(elem: ET.Element) -> str:
    """Tag without its namespace."""
    return elem.tag.rpartition("}")[2]


def stream_header(domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='{NS_STREAM}' to={quoteattr(domain)} version='1.0'>"
    ).encode()


def presence_xml(to: str | None = None, type_: str | None = None,
                 status: str | None = None, id_: str | None = None) -> str:
    attrs = "".join(f" {k}={quoteattr(v)}" for k, v in (("to", to), ("type", type_), ("id", id_)) if v)
    if status is None:
        return f"<presence{attrs}/>"
    return f"<presence{attrs}><status>{escape(status)}</status></presence>"


def message_xml(to: str, body: str, id_: str | None = None) -> str:
    id_attr = f" id={quoteattr(id_)}" if id_ else ""
    return f"<message to={quoteattr(to)} type='chat'{id_attr}><body>{escape(body)}</body></message>"


def stream_error(elem: ET.Element) -> XmppError:
    """The XmppError for a received <stream:error/> (with a see-other-host target)."""
    cond = next((local_tag(c) for c in elem if local_tag(c) != "text"), "?")
    other = None
    if cond == "see-other-host":
        other = next((c.text for c in elem if local_tag(c) == "see-other-host"), None)
    return XmppError(f"stream error: {cond}", condition=cond, other_host=other)


def _payload_ns(iq: ET.Element) -> str:
    return iq[0].tag.partition("}")[0].lstrip("{") if len(iq) else ""


def parse_roster(iq: ET.Element) -> list[RosterItem]:
    """Roster items of a roster result or push."""
    query = iq.find(f"{{{NS_ROSTER}}}query")
    if query is None:
        return []
    return [RosterItem(i.get("jid", ""), i.get("subscription", "none"), i.get("ask"))
            for i in query.findall(f"{{{NS_ROSTER}}}item")]


@dataclass(frozen=True)
class ClientConfig:
    """Where and how one client logs in."""

    host: str
    port: int
    domain: str
    username: str
    password: str
    resource: str = "bench"
    tls: bool = False
    mech: str = "PLAIN"
    source_ip: str | None = None
    sm: bool = False
    timeout_s: float = 30.0


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One shared client context: building one per connection (and loading the CA store)
    costs tens of ms of client CPU. No verification: benchmark servers are self-signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class XmppClient:
    """One XMPP c2s connection. `await login()`, then send; close() when done."""

    def __init__(self, config: ClientConfig,
                 on_stanza: Callable[[ET.Element], None] | None = None) -> None:
        self.config = config
        self.on_stanza = on_stanza
        self.jid = ""
        self.features: ET.Element | None = None
        self.sm_enabled = False
        self.inbound = 0  # XEP-0198 'h': stanzas handled
        self.outbound = 0  # XEP-0198: stanzas sent since <enable/> (what the server's 'h' counts)
        self.on_ack: Callable[[int], None] | None = None  # the server's <a h=''/>
        self.on_closed: Callable[[str], None] | None = None  # the reader stopped: why
        self.iq_set_handlers: dict[str, Callable[[ET.Element], None]] = {}  # payload ns -> handler
        self._reader = StanzaReader()
        self._pending: list = []
        self._iq_waiters: dict[str, asyncio.Future] = {}
        self._rx: asyncio.StreamReader | None = None
        self._tx: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.close_error: Exception | None = None

    async def login(self) -> float:
        """Connect and negotiate up to a ready session; return the seconds it took."""
        start = time.monotonic()
        try:
            await asyncio.wait_for(self._negotiate(), self.config.timeout_s)
        except (TimeoutError, OSError, ssl.SSLError, ET.ParseError, scramp.ScramException) as exc:
            self.abort()
            raise XmppError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc
        except XmppError:
            self.abort()
            raise
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        return time.monotonic() - start

    async def _negotiate(self) -> None:
        cfg = self.config
        local = (cfg.source_ip, 0) if cfg.source_ip else None
        self._rx, self._tx = await asyncio.open_connection(cfg.host, cfg.port, local_addr=local)
        await self._open_stream()
        if cfg.tls:
            await self._starttls()
        await self._authenticate()
        await self._open_stream()
        await self._bind()
        if cfg.sm and self._has_feature(NS_SM, "sm"):
            self.send_raw(f"<enable xmlns='{NS_SM}'/>")
            answer = await self._next_element()
            self.sm_enabled = local_tag(answer) == "enabled"
            self.outbound = 0

    async def _open_stream(self) -> None:
        self._reader.restart()
        self._pending.clear()
        assert self._tx is not None  # connected
        self._tx.write(stream_header(self.config.domain))
        while not isinstance(await self._next_event(), StreamOpened):
            pass
        features = await self._next_element()
        if features.tag != f"{{{NS_STREAM}}}features":
            raise XmppError(f"expected stream features, got {features.tag}")
        self.features = features

    def _has_feature(self, ns: str, name: str) -> bool:
        return self.features is not None and self.features.find(f"{{{ns}}}{name}") is not None

    async def _starttls(self) -> None:
        if not self._has_feature(NS_TLS, "starttls"):
            raise XmppError("server does not offer STARTTLS")
        self.send_raw(f"<starttls xmlns='{NS_TLS}'/>")
        if local_tag(await self._next_element()) != "proceed":
            raise XmppError("STARTTLS refused")
        assert self._tx is not None  # connected
        await self._tx.start_tls(_tls_context(), server_hostname=self.config.domain)
        await self._open_stream()

    async def _authenticate(self) -> None:
        cfg = self.config
        assert self.features is not None  # _open_stream read them
        offered = {m.text or "" for m in self.features.iter(f"{{{NS_SASL}}}mechanism")}
        if cfg.mech not in offered:
            raise XmppError(f"mechanism {cfg.mech} not offered (offered: {sorted(offered)})")
        if cfg.mech == "PLAIN":
            payload = f"\0{cfg.username}\0{cfg.password}".encode()
            self._send_sasl("auth", payload, cfg.mech)
            answer = await self._next_element()
        else:
            answer = await self._scram()
        if local_tag(answer) != "success":
            cond = next((local_tag(c) for c in answer), "unknown")
            raise XmppError(f"SASL {cfg.mech} failed: {cond}", condition=cond)

    async def _scram(self) -> ET.Element:
        cfg = self.config
        scram = scramp.ScramClient([cfg.mech], cfg.username, cfg.password)
        self._send_sasl("auth", scram.get_client_first().encode(), cfg.mech)
        answer = await self._next_element()
        if local_tag(answer) != "challenge":
            return answer
        scram.set_server_first(base64.b64decode(answer.text or "").decode())
        self._send_sasl("response", scram.get_client_final().encode())
        answer = await self._next_element()
        if local_tag(answer) == "challenge":  # server-final as a challenge (RFC 6120 §6.4.6)
            scram.set_server_final(base64.b64decode(answer.text or "").decode())
            self._send_sasl("response", b"")
            return await self._next_element()
        if local_tag(answer) == "success" and answer.text:
            scram.set_server_final(base64.b64decode(answer.text).decode())
        return answer

    def _send_sasl(self, name: str, payload: bytes, mech: str | None = None) -> None:
        mech_attr = f" mechanism='{mech}'" if mech else ""
        data = base64.b64encode(payload).decode() or "="
        self.send_raw(f"<{name} xmlns='{NS_SASL}'{mech_attr}>{data}</{name}>")

    async def _bind(self) -> None:
        res = escape(self.config.resource)
        answer = await self._negotiation_iq(
            f"<bind xmlns='{NS_BIND}'><resource>{res}</resource></bind>")
        jid = answer.find(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        self.jid = jid.text if jid is not None and jid.text else ""
        assert self.features is not None  # _open_stream read them
        session = self.features.find(f"{{{NS_SESSION}}}session")
        if session is not None and session.find(f"{{{NS_SESSION}}}optional") is None:
            await self._negotiation_iq(f"<session xmlns='{NS_SESSION}'/>")

    async def _negotiation_iq(self, payload: str) -> ET.Element:
        iq_id = f"n{next(_ids)}"
        self.send_raw(f"<iq type='set' id='{iq_id}'>{payload}</iq>")
        while True:
            answer = await self._next_element()
            if local_tag(answer) == "iq" and answer.get("id") == iq_id:
                break
        if answer.get("type") != "result":
            raise XmppError(f"iq {payload[:30]!r} failed")
        return answer

    async def _next_event(self) -> StreamOpened | StreamClosed | ET.Element:
        assert self._rx is not None  # connected
        while not self._pending:
            data = await self._rx.read(65536)
            if not data:
                raise XmppError("connection closed by server")
            self._pending.extend(self._reader.feed(data))
        return self._pending.pop(0)

    async def _next_element(self) -> ET.Element:
        event = await self._next_event()
        if isinstance(event, StreamClosed):
            raise XmppError("stream closed by server")
        if isinstance(event, StreamOpened):
            raise XmppError("unexpected stream header")
        if event.tag == f"{{{NS_STREAM}}}error":
            raise stream_error(event)
        return event

    async def _read_loop(self) -> None:
        reason = "stream closed by server"
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, ET.Element) and event.tag == f"{{{NS_STREAM}}}error":
                    raise stream_error(event)  # e.g. see-other-host after a failover (SPEC §7)
                if isinstance(event, ET.Element):
                    self._dispatch(event)
                elif isinstance(event, StreamClosed):
                    break
        except (XmppError, OSError, ET.ParseError) as exc:
            log.debug("%s: reader stopped: %s", self.jid, exc)
            reason = str(exc)
            self.close_error = exc
        except asyncio.CancelledError:
            reason = "aborted by the client"
            raise
        finally:
            for fut in self._iq_waiters.values():
                if not fut.done():
                    fut.set_exception(XmppError("connection lost"))
            if self.on_closed is not None:
                self.on_closed(reason)

    def _dispatch(self, elem: ET.Element) -> None:
        tag = local_tag(elem)
        if elem.tag.startswith(f"{{{NS_SM}}}"):
            if tag == "r":
                self.send_raw(f"<a xmlns='{NS_SM}' h='{self.inbound % 2**32}'/>")
            elif tag == "a" and self.on_ack is not None:
                self.on_ack(int(elem.get("h", "0")))
            return
        self.inbound += 1
        if tag == "iq" and self._handle_iq(elem):
            return
        if self.on_stanza is not None:
            self.on_stanza(elem)

    def _handle_iq(self, iq: ET.Element) -> bool:
        """Consume IQ results and roster pushes; refuse other requests (RFC 6120 §8.4)."""
        kind = iq.get("type")
        if kind in ("result", "error"):
            fut = self._iq_waiters.pop(iq.get("id", ""), None)
            if fut is not None and not fut.done():
                fut.set_result(iq)
            return fut is not None
        reply_id = quoteattr(iq.get("id", ""))
        if kind == "set" and iq.find(f"{{{NS_ROSTER}}}query") is not None:
            self._send_stanza(f"<iq type='result' id={reply_id}/>")
            return False  # the callback may want to see pushes
        handler = self.iq_set_handlers.get(_payload_ns(iq)) if kind == "set" else None
        if handler is not None:
            self._send_stanza(f"<iq type='result' id={reply_id}/>")
            handler(iq)
            return True
        to = quoteattr(iq.get("from", self.config.domain))
        self._send_stanza(f"<iq type='error' id={reply_id} to={to}><error type='cancel'>"
                          f"<service-unavailable xmlns='{NS_STANZAS}'/></error></iq>")
        return True

    async def iq(self, type_: str, payload: str, timeout_s: float = 30.0) -> ET.Element:
        """Send an IQ after login and await its result or error."""
        iq_id = f"q{next(_ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._iq_waiters[iq_id] = fut
        self._send_stanza(f"<iq type='{type_}' id='{iq_id}'>{payload}</iq>")
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._iq_waiters.pop(iq_id, None)

    async def roster_get(self) -> list[RosterItem]:
        """The user's roster (RFC 6121 §2.1.3)."""
        return parse_roster(await self.iq("get", f"<query xmlns='{NS_ROSTER}'/>"))

    def send_raw(self, data: str) -> None:
        if self._tx is not None and not self._tx.is_closing():
            self._tx.write(data.encode())

    def _send_stanza(self, data: str) -> None:
        """send_raw for a stanza: counted for XEP-0198 acks once SM is on."""
        if self.sm_enabled:
            self.outbound += 1
        self.send_raw(data)

    def send_stanza(self, data: str) -> None:
        """Send a stanza (counted for XEP-0198). An IQ sent this way is not awaited by
        `iq()`: its answer goes to `on_stanza`, in stream order with what follows it."""
        self._send_stanza(data)

    def request_ack(self) -> None:
        """XEP-0198 `<r/>`: the server answers `<a h=''/>` (reported to `on_ack`)."""
        if self.sm_enabled:
            self.send_raw(f"<r xmlns='{NS_SM}'/>")

    @property
    def connected(self) -> bool:
        return self._task is not None and not self._task.done()

    def send_presence(self, to: str | None = None, type_: str | None = None,
                      status: str | None = None) -> None:
        self._send_stanza(presence_xml(to, type_, status))

    def send_message(self, to: str, body: str, id_: str | None = None) -> None:
        self._send_stanza(message_xml(to, body, id_))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close the stream politely, then the socket."""
        if self._tx is None:
            return
        self.send_raw("</stream:stream>")
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
        self.abort()

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        if self._tx is not None:
            self._tx.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
