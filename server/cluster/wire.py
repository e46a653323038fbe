"""What node-to-node STANZA and CONTROL frames carry (pure: bytes in, values out).

Rules of this module:
- A STANZA frame is a one-line header, a newline, then the stanza serialized with
  `server.xmpp.stanzas.serialize` (no `ns0:` prefixes, `jabber:client` implicit):
  `R` a stanza routed to an account served by the receiving node; `U <sid>` a stanza
  a relayed client sent (upstream, to the node hosting session `sid`); `D <sid>` a
  stanza for that client (downstream, to the node holding its connection).
- A CONTROL frame is one JSON object with an `op` (`Op`) and its fields.
- Decoding never trusts the peer: a malformed frame, an unknown op or XML with a
  DTD/entities is a `WireError`, which the receiver logs and drops (the frame is
  already acknowledged; a buggy peer must not stop the link). The `from` of a routed
  stanza must be an address of the cluster's own domain (`check_origin`).
- Stanza XML is parsed by expat in C, at a sixth of the cost of defusedxml's
  pure-Python parser (12% of a node's time in the cross-node benchmark): one
  long-lived parser (`_StanzaParser`, expat feeding the C tree builder) takes every
  frame's body as the next child of a never-closed root, because making a parser per
  frame costs more than parsing a stanza. Anything but exactly one complete element
  resets it, and so does every `_PARSER_LIFE` frames (its name cache must not grow
  without bound).
- It stays restricted XML (RFC 6120 §11.1), which `serialize` always writes: inside
  the open root a DTD, an entity declaration, an XML declaration, a NUL byte or any
  but the predefined entities is a parse error (the first feed fixed the encoding as
  UTF-8), and the comments and processing instructions expat accepts are reported by
  the tree builder (`comment_factory`, `pi_factory`) and refused. Checked by the parser
  as it goes: scanning each body for them first cost a quarter of its parse. CDATA
  sections are allowed XML (and read as text).
- `routed_recipient` reads a routed frame's recipient from its text, where
  `encode_routed` wrote it, so the receiver can queue the frame before parsing it. It
  is an ordering key, not a decision: delivery goes by the parsed stanza.
"""

from __future__ import annotations

import enum
import functools
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.stanzas import STANZA_TAGS, serialize

ROUTED = b"R"
ROUTED_PREFIX = ROUTED + b"\n"  # how a routed frame starts
UPSTREAM = b"U"
DOWNSTREAM = b"D"


class WireError(ValueError):
    """A frame this node cannot accept."""


class Op(enum.Enum):
    OPEN = "open"  # dialled node -> active node: create relayed session sid for jid
    OPENED = "opened"  # active node -> dialled node: sid is bound
    REFUSED = "refused"  # active node -> dialled node: sid was not created (reason)
    CLOSE = "close"  # active node -> dialled node: end the client's stream (error)
    CLOSED = "closed"  # dialled node -> active node: the client's stream ended
    MOVED = "moved"  # users changed nodes: forget cached locations
    SM = "sm"  # XEP-0198 replica entries for the backup node (server.cluster.sm_replica), maybe `sync`
    SM_SYNCED = "sm-synced"  # backup -> origin: every `sm` frame up to `sync` = seq was received


# Made per frame, so not frozen: a frozen dataclass's __init__ costs three times as much.
@dataclass(slots=True)
class Routed:
    stanza: ET.Element


@dataclass(slots=True)
class SessionStanza:
    sid: str
    stanza: ET.Element
    upstream: bool  # True: from the client to its session; False: to the client


@dataclass(frozen=True)
class Control:
    op: Op
    fields: dict[str, Any]

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.fields.get(key, default)
        return value if value is None or isinstance(value, str) else str(value)


def encode_routed(stanza: ET.Element) -> bytes:
    return ROUTED + b"\n" + serialize(stanza).encode()


def routed_body(payload: bytes) -> bytes:
    """The serialized stanza of a routed frame (one that `decode_stanza` accepted)."""
    return payload[len(ROUTED) + 1:]


def encode_session(sid: str, stanza: ET.Element, *, upstream: bool, body: bytes | None = None) -> bytes:
    """`body`: the stanza already serialized (`Session.send`'s `wire`)."""
    kind = UPSTREAM if upstream else DOWNSTREAM
    return kind + b" " + sid.encode() + b"\n" + (serialize(stanza).encode() if body is None else body)


def encode_control(op: Op, **fields: Any) -> bytes:
    return json.dumps({"op": op.value, **fields}, separators=(",", ":")).encode()


# `serialize` writes attributes as ` name='value'` with ' & < > " escaped, so the first
# `>` ends the start tag and the value ends at the next quote.
_ROUTED_TO = re.compile(rb"R\n<(?:message|presence|iq)(?= )[^>]* to='([^'&]*)'")


def routed_recipient(payload: bytes) -> str | None:
    """The bare `to` of a routed STANZA frame as `encode_routed` writes it, read without
    parsing; None if the payload is not one (decode it to find out)."""
    match = _ROUTED_TO.match(payload)
    if match is None:
        return None
    try:
        return match.group(1).decode("utf-8").split("/", 1)[0]
    except UnicodeDecodeError:
        return None


_PARSER_LIFE = 10_000  # frames per parser


class _StanzaParser:
    """Frame bodies parsed as the children of one open `<frames>` element, one by one.

    The C parser feeds the C tree builder directly (no event queue to walk in Python:
    half the cost of a pull parser). Whether a body was exactly one closed element is
    read from the tree: each body is followed by a probe element, which must land as
    the stanza's sibling. An unclosed stanza would take it as a descendant, a second
    element would come between them, and a body closing `<frames>` makes the probe a
    parse error (junk after the document)."""

    _PROBE = b"<_/>"

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        builder = ET.TreeBuilder(comment_factory=self._refuse_comment, pi_factory=self._refuse_pi,
                                 insert_comments=True, insert_pis=True)
        holder = builder.start("holder", {})  # not part of the document: keeps its root reachable
        self._parser = ET.XMLParser(target=builder)
        self._parser.feed(b"<frames>")
        self._root = holder[0]
        self._left = _PARSER_LIFE
        self._refused: str | None = None

    def _refuse_comment(self, _text: str | None) -> ET.Element:
        self._refused = "a comment"
        return ET.Element("!")

    def _refuse_pi(self, _target: str, _text: str | None = None) -> ET.Element:
        self._refused = "a processing instruction"
        return ET.Element("!")

    def parse(self, body: bytes) -> ET.Element:
        if body[:1] != b"<" or body[-1:] != b">":  # no text beside the element: it would
            raise WireError("bad stanza XML: text outside the element")  # be another's tail
        root = self._root
        try:
            self._parser.feed(body + self._PROBE)
        except ET.ParseError as exc:
            self._reset()
            raise WireError(f"bad stanza XML: {exc}") from None
        if self._refused is not None:
            refused = self._refused
            self._reset()
            raise WireError(f"bad stanza XML: {refused} (restricted XML)")
        if len(root) != 2:
            self._reset()
            raise WireError("bad stanza XML: not exactly one element")
        stanza, probe = root
        if probe.tag != "_" or len(probe) or probe.attrib:  # one element, closed
            self._reset()
            raise WireError("bad stanza XML: not exactly one element")
        del root[:]
        self._left -= 1
        if not self._left:
            self._reset()
        return stanza


_parser = _StanzaParser()  # the event loop's thread only, one whole body at a time


def _parse_stanza(body: bytes) -> ET.Element:
    stanza = _parser.parse(body)
    if stanza.tag not in STANZA_TAGS:
        raise WireError(f"not a stanza: {stanza.tag}")
    return stanza


def decode_stanza(payload: bytes) -> Routed | SessionStanza:
    header, sep, body = payload.partition(b"\n")
    if not sep:
        raise WireError("STANZA frame without a header line")
    if header == ROUTED:
        return Routed(_parse_stanza(body))
    kind, _, sid = header.partition(b" ")
    if kind not in (UPSTREAM, DOWNSTREAM) or not sid:
        raise WireError(f"unknown STANZA header {header[:40]!r}")
    return SessionStanza(sid.decode("ascii", "replace"), _parse_stanza(body), kind == UPSTREAM)


def decode_session(payload: bytes) -> SessionStanza:
    """A relayed session's STANZA frame (`U <sid>` / `D <sid>`)."""
    frame = decode_stanza(payload)
    if not isinstance(frame, SessionStanza):
        raise WireError("not a session stanza")
    return frame


def decode_control(payload: bytes) -> Control:
    try:
        data = json.loads(payload)
        op = Op(data.pop("op"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"bad CONTROL frame: {exc!r}") from None
    return Control(op, data)


def check_origin(stanza: ET.Element, domain: str) -> None:
    """A routed stanza's `from` must be the cluster's domain or one of its accounts."""
    sender = stanza.get("from") or ""
    sender_domain = _domain_of(sender)
    if sender_domain is None:
        raise WireError(f"routed stanza with a bad 'from' {sender!r}")
    if sender_domain != domain:
        raise WireError(f"routed stanza from outside the cluster's domain: {sender}")


@functools.lru_cache(maxsize=4096)
def _domain_of(address: str) -> str | None:
    """The domain of a JID, None if it is not one. Cached: a JID is checked per routed
    stanza, the same few senders again and again, and stringprep costs ~4 us."""
    try:
        return JID.parse(address).domain
    except InvalidJid:
        return None
