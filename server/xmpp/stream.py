"""The server side of one client XMPP stream, as a sans-IO state machine (RFC 6120).

Rules of this module:
- No I/O, no clock, no asyncio. Bytes in (`receive_data`), ordered events out
  (`events()`: `Outgoing` bytes plus facts, see `server.xmpp.events`); stanzas in,
  bytes out (`send_stanza`). Randomness (stream ids, resources, nonces, resumption ids)
  comes from the injected `random.Random`; time comes in as `timer_fired`.
- Negotiation is the `Phase` ladder TLS -> AUTH -> BIND -> BOUND (RFC 6120 §5, §6, §7),
  then CLOSED. What a top-level element does in a phase is one row of `ROUTES`; an
  element without a row is `not-authorized` (a stanza before binding) or
  `unsupported-stanza-type` (anything else).
- While the host answers a question (keys, login, resume, registration, TLS) the core
  queues input and handles it afterwards, in order.
- A peer's fault is an output: `<stream:error/>`, `</stream:stream>` and `StreamClosed`.
  If our header was not sent yet, it is sent first (RFC 6120 §4.9.1.1).
- Every stream restart (after TLS and SASL) uses a fresh parser; stale input is dropped.
  Its bounds of pending input (`ParserLimits`) are small before authentication and
  larger after it (`max_tag_bytes`), never beyond `max_stanza_bytes`.
"""

from __future__ import annotations

import enum
import functools
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from presence_ha.server.xmpp import negotiation as neg
from presence_ha.server.xmpp.errors import Condition, StanzaError, StreamCondition, StreamError
from presence_ha.server.xmpp.events import (
    ClientStateChanged,
    Event,
    Outgoing,
    ResumeRequested,
    SessionResumed,
    StanzaReceived,
    StreamClosed,
    StreamManagementEnabled,
    TlsRequested,
)
from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.negotiation import Phase, SaslFailure, Waiting
from presence_ha.server.xmpp.parser import (
    ElementParsed,
    FooterParsed,
    HeaderParsed,
    ParseEvent,
    ParseFault,
    ParserLimits,
    StreamParser,
)
from presence_ha.server.xmpp.sasl import ChannelBinding
from presence_ha.server.xmpp.sm import AckTooHigh, StreamManagement
from presence_ha.server.xmpp.stanzas import (
    NS_BIND,
    NS_CLIENT,
    NS_CSI,
    NS_SESSION,
    NS_SM,
    NS_STREAM,
    NS_TLS,
    STANZA_TAGS,
    STREAM_FOOTER,
    iq_result,
    stream_error,
    stream_header,
    to_bytes,
)


class Timer(enum.Enum):
    AUTH = "auth"  # RFC 6120 §4.7 timeouts: unauthenticated connections do not linger


@dataclass(frozen=True)
class StreamSettings:
    domain: str
    tls_required: bool = True
    max_stanza_bytes: int = 256 * 1024
    registration_enabled: bool = False
    max_auth_failures: int = 3  # per stream; RFC 6120 §6.4.5 allows 2 to 5 retries
    sm_max_resume_s: int = 300
    ack_request_every: int = 5  # stanzas sent between two <r/> (XEP-0198 §4)
    # pending input (server.xmpp.parser.ParserLimits): the header, its namespace
    # declarations, an incomplete tag before and after authentication
    max_header_bytes: int = 4096
    max_header_namespaces: int = 16
    max_tag_bytes_unauthenticated: int = 4096
    max_tag_bytes: int = 16 * 1024
    caps_ver: str | None = None  # XEP-0115 verification string of the server (None: no <c/> offered)

    @functools.cached_property
    def parser_limits(self) -> tuple[ParserLimits, ParserLimits]:
        """(before, after) authentication; built once, shared by every stream."""
        return tuple(  # type: ignore[return-value]
            ParserLimits(self.max_header_bytes, self.max_header_namespaces, tag)
            for tag in (self.max_tag_bytes_unauthenticated, self.max_tag_bytes)
        )


class XmppStream(neg.Negotiation):
    """One client connection's stream (readable state: `phase`, `jid`, `sm`...)."""

    def __init__(self, settings: StreamSettings, rng: random.Random, secret: bytes, tls_active: bool = False,
                 binding: ChannelBinding | None = None) -> None:
        """`tls_active`: the connection began with TLS (XEP-0368), `binding` its channel bindings."""
        self.settings = settings
        self.rng = rng
        self.secret = secret
        self.tls_active = tls_active
        self.binding = binding
        self.phase = Phase.TLS if settings.tls_required and not tls_active else Phase.AUTH
        self.waiting: Waiting | None = None
        self.jid: JID | None = None  # bare after SASL, full after bind
        self.sm: StreamManagement | None = None
        self.client_active = True
        self.stream_id = ""
        self._header_sent = False
        self._refusal: StreamError | None = None
        self._peer_from: str | None = None
        self._events: list[Event] = []
        self._inbox: list[ParseEvent] = []  # a list: an empty deque costs 0.6 kB of every idle session
        self._parser = self._new_parser()
        neg.Negotiation.__init__(self)

    # -- host API -------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.phase is Phase.CLOSED or self.waiting is Waiting.TLS:
            return
        self._inbox.extend(self._parser.feed(data))
        self._drain_inbox()

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def send_stanza(self, stanza: ET.Element, wire: bytes | None = None) -> bytes:
        """Bytes for a stanza to the client (counted for XEP-0198 when enabled); `wire`:
        the stanza already serialized (`Session.send`)."""
        if self.phase is not Phase.BOUND:
            return b""
        data = to_bytes(stanza) if wire is None else wire
        if self.sm is not None:
            self.sm.record_outbound(stanza)
            if self.sm.unacked_count % self.settings.ack_request_every == 0:
                data += self.request_ack()
        return data

    def request_ack(self) -> bytes:
        """`<r/>` if XEP-0198 is on, stanzas are unacked and no request is outstanding."""
        if self.phase is not Phase.BOUND or self.sm is None or self.sm.ack_requested or not self.sm.unacked_count:
            return b""
        self.sm.ack_requested = True
        return f"<r xmlns='{NS_SM}'/>".encode()

    def refuse_on_header(self, error: StreamError) -> None:
        """Answer the peer's stream header with `error` and end the stream (the host
        sheds load: the login gate is full)."""
        self._refusal = error

    def tls_established(self, binding: ChannelBinding | None = None) -> None:
        """The adapter finished the TLS handshake (its channel bindings: `binding`): the
        client restarts the stream."""
        assert self.waiting is Waiting.TLS
        self.tls_active = True
        self.binding = binding
        self.phase = Phase.AUTH
        self._restart()

    def timer_fired(self, timer: Timer) -> None:
        if timer is Timer.AUTH and self.phase in (Phase.TLS, Phase.AUTH, Phase.BIND):
            self.close(StreamError(StreamCondition.CONNECTION_TIMEOUT, "not authenticated in time"))

    def close(self, error: StreamError | None = None, by_peer: bool = False) -> None:
        """End the stream, with `error` if given (RFC 6120 §4.4, §4.9)."""
        if self.phase is Phase.CLOSED:
            return
        out = b"" if self._header_sent else self._header_bytes(None)
        if error is not None:
            out += to_bytes(stream_error(error.condition.value, error.text, error.other_host))
        self._emit(Outgoing(out + STREAM_FOOTER))
        self.phase = Phase.CLOSED
        self.waiting = None
        self._inbox.clear()
        self._events.append(StreamClosed(error, by_peer))

    # -- internals ------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _send(self, elem: ET.Element) -> None:
        self._emit(Outgoing(to_bytes(elem)))

    def _restart(self) -> None:
        self.waiting = None
        self._header_sent = False
        self._inbox.clear()
        self._parser = self._new_parser()

    def _new_parser(self) -> StreamParser:
        """A parser with the pending-input limits of the phase (larger once authenticated)."""
        authenticated = self.phase in (Phase.BIND, Phase.BOUND)
        return StreamParser(self.settings.max_stanza_bytes, self.settings.parser_limits[authenticated])

    def _wait(self, what: Waiting) -> None:
        self.waiting = what

    def _resume_input(self) -> None:
        self.waiting = None
        self._drain_inbox()

    def _drain_inbox(self) -> None:
        while self._inbox and self.waiting is None and self.phase is not Phase.CLOSED:
            self._handle(self._inbox.pop(0))  # a handful per read: cheaper than a deque's block

    def _handle(self, event: ParseEvent) -> None:
        if isinstance(event, ParseFault):
            self.close(event.error)
        elif isinstance(event, HeaderParsed):
            self._on_header(event)
        elif isinstance(event, FooterParsed):
            self.close(by_peer=True)
        elif isinstance(event, ElementParsed):
            self._on_element(event.element)

    def _header_bytes(self, to: str | None) -> bytes:
        self.stream_id = f"{self.rng.getrandbits(64):016x}"
        self._header_sent = True
        return stream_header(stream_id=self.stream_id, domain=self.settings.domain, to=to)

    def _on_header(self, header: HeaderParsed) -> None:
        if self._refusal is not None:
            self.close(self._refusal)
            return
        try:
            self._check_header(header)
        except StreamError as exc:
            self.close(exc)
            return
        # one write (one TLS record, one syscall) for the header and its features
        self._emit(Outgoing(self._header_bytes(header.attrs.get("from")) + to_bytes(self._features())))

    def _check_header(self, header: HeaderParsed) -> None:
        """RFC 6120 §4.7, §4.8: namespaces, version, and the `to` domain."""
        if header.name != f"{{{NS_STREAM}}}stream" or header.default_ns != NS_CLIENT:
            raise StreamError(StreamCondition.INVALID_NAMESPACE, "expected a jabber:client stream")
        major, _, _minor = (header.attrs.get("version") or "0.0").partition(".")
        if not major.isdigit() or int(major) < 1:
            raise StreamError(StreamCondition.UNSUPPORTED_VERSION, "XMPP 1.0 streams only")
        to = header.attrs.get("to")
        try:
            domain = JID.parse(to).domain if to else self.settings.domain
        except InvalidJid:
            domain = None
        if domain != self.settings.domain:
            raise StreamError(StreamCondition.HOST_UNKNOWN, f"this server serves {self.settings.domain}")

    def _on_element(self, elem: ET.Element) -> None:
        handler = ROUTES.get((self.phase, elem.tag))
        if handler is not None:
            handler(self, elem)
        elif elem.tag in STANZA_TAGS:
            self.close(StreamError(StreamCondition.NOT_AUTHORIZED, "authenticate and bind a resource first"))
        else:
            self.close(StreamError(StreamCondition.UNSUPPORTED_STANZA_TYPE, f"unexpected element {elem.tag}"))

    # -- established session ----------------------------------------------------
    def _on_stanza(self, stanza: ET.Element) -> None:
        sender = stanza.get("from")
        if sender and sender not in (str(self.jid), str(self.jid.bare if self.jid else "")):
            self.close(StreamError(StreamCondition.INVALID_FROM, "'from' is not your JID"))
            return
        if self.sm is not None:
            self.sm.count_inbound()
        payload = stanza[0] if stanza.tag == "iq" and len(stanza) == 1 else None
        if payload is not None and payload.tag in (f"{{{NS_SESSION}}}session", f"{{{NS_BIND}}}bind"):
            self._on_bound_negotiation_iq(stanza, payload)
            return
        self._emit(StanzaReceived(stanza))

    def _on_bound_negotiation_iq(self, iq: ET.Element, payload: ET.Element) -> None:
        if payload.tag == f"{{{NS_SESSION}}}session":  # RFC 3921 §3, a no-op today
            self.send_and_emit(iq_result(iq))
            return
        error = StanzaError(Condition.NOT_ALLOWED, "one resource per stream")
        self.send_and_emit(neg.iq_error(iq, error))

    def send_and_emit(self, stanza: ET.Element) -> None:
        self._emit(Outgoing(self.send_stanza(stanza)))

    def _on_sm_enable(self, elem: ET.Element) -> None:
        if self.sm is not None:
            self._send(neg.sm_failed("unexpected-request"))
            return
        resumable = elem.get("resume") in ("true", "1")
        resume_id = f"{self.rng.getrandbits(128):032x}" if resumable else None
        self.sm = StreamManagement(resume_id, self.settings.sm_max_resume_s)
        attrs = {"id": resume_id, "resume": "true", "max": str(self.settings.sm_max_resume_s)} if resume_id else {}
        self._send(ET.Element(f"{{{NS_SM}}}enabled", attrs))
        self._emit(StreamManagementEnabled(resume_id, self.settings.sm_max_resume_s))

    def _on_sm_request(self, _elem: ET.Element) -> None:
        if self.sm is None:
            self._send(neg.sm_failed("unexpected-request"))
            return
        self._send(ET.Element(f"{{{NS_SM}}}a", {"h": str(self.sm.inbound)}))

    def _on_sm_ack(self, elem: ET.Element) -> None:
        if self.sm is None:
            return
        try:
            self.sm.acknowledge(int(elem.get("h", "")))
        except ValueError as exc:
            self._ack_fault(exc)

    def _ack_fault(self, exc: ValueError) -> None:
        # XEP-0198 §4: a wrong h ends the stream with undefined-condition.
        self.close(StreamError(StreamCondition.UNDEFINED_CONDITION, f"XEP-0198 handled-count-too-high: {exc}"))

    def _on_sm_resume(self, elem: ET.Element) -> None:
        previd, h = elem.get("previd"), elem.get("h", "")
        if not previd or not h.isdigit():
            self._send(neg.sm_failed("bad-request"))
            return
        self._wait(Waiting.RESUME)
        self._emit(ResumeRequested(previd, int(h)))

    def resume_accepted(self, jid: JID, sm: StreamManagement, h: int) -> None:
        """Take over the detached session `jid`; re-send what the client did not ack."""
        assert self.waiting is Waiting.RESUME
        try:
            sm.acknowledge(h)
        except AckTooHigh as exc:
            self._ack_fault(exc)
            return
        self.jid, self.sm, self.phase = jid, sm, Phase.BOUND
        self._send(ET.Element(f"{{{NS_SM}}}resumed", {"h": str(sm.inbound), "previd": sm.resume_id or ""}))
        self._emit(SessionResumed(jid))
        for stanza in sm.take_unacked():
            self.send_and_emit(stanza)
        self._resume_input()

    def resume_refused(self) -> None:
        assert self.waiting is Waiting.RESUME
        self._send(neg.sm_failed("item-not-found"))
        self._resume_input()

    def _on_csi(self, elem: ET.Element) -> None:
        self.client_active = elem.tag == f"{{{NS_CSI}}}active"
        self._emit(ClientStateChanged(self.client_active))

    def _on_starttls(self, _elem: ET.Element) -> None:
        if self.tls_active:
            self.close(StreamError(StreamCondition.POLICY_VIOLATION, "TLS is already on"))
            return
        self._emit(Outgoing(f"<proceed xmlns='{NS_TLS}'/>".encode()))
        self._wait(Waiting.TLS)
        self._inbox.clear()  # RFC 6120 §5.4.3.3: nothing after <starttls/> counts
        self._emit(TlsRequested())


def _sm(local: str) -> str:
    return f"{{{NS_SM}}}{local}"


ROUTES = {
    (Phase.TLS, f"{{{NS_TLS}}}starttls"): XmppStream._on_starttls,
    (Phase.AUTH, f"{{{NS_TLS}}}starttls"): XmppStream._on_starttls,
    **{(Phase.AUTH, tag): fn for tag, fn in neg.AUTH_ROUTES.items()},
    (Phase.BIND, "iq"): neg.Negotiation._on_bind_iq,
    (Phase.BIND, _sm("resume")): XmppStream._on_sm_resume,
    (Phase.BIND, _sm("enable")): lambda s, e: s._send(neg.sm_failed("unexpected-request")),
    (Phase.BOUND, "message"): XmppStream._on_stanza,
    (Phase.BOUND, "presence"): XmppStream._on_stanza,
    (Phase.BOUND, "iq"): XmppStream._on_stanza,
    (Phase.BOUND, _sm("enable")): XmppStream._on_sm_enable,
    (Phase.BOUND, _sm("r")): XmppStream._on_sm_request,
    (Phase.BOUND, _sm("a")): XmppStream._on_sm_ack,
    (Phase.BOUND, _sm("resume")): lambda s, e: s._send(neg.sm_failed("unexpected-request")),
    (Phase.BOUND, f"{{{NS_CSI}}}active"): XmppStream._on_csi,
    (Phase.BOUND, f"{{{NS_CSI}}}inactive"): XmppStream._on_csi,
}

__all__ = ["Phase", "SaslFailure", "StreamSettings", "Timer", "Waiting", "XmppStream"]
