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
"""

from __future__ import annotations

import enum
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import defusedxml.ElementTree as SafeET

from server.xmpp.jid import JID, InvalidJid
from server.xmpp.stanzas import STANZA_TAGS, serialize

ROUTED = b"R"
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


@dataclass(frozen=True)
class Routed:
    stanza: ET.Element


@dataclass(frozen=True)
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


def encode_session(sid: str, stanza: ET.Element, *, upstream: bool) -> bytes:
    kind = UPSTREAM if upstream else DOWNSTREAM
    return kind + b" " + sid.encode() + b"\n" + serialize(stanza).encode()


def encode_control(op: Op, **fields: Any) -> bytes:
    return json.dumps({"op": op.value, **fields}, separators=(",", ":")).encode()


def _parse_stanza(body: bytes) -> ET.Element:
    try:
        stanza = SafeET.fromstring(body)
    except (ET.ParseError, ValueError) as exc:  # defusedxml's refusals are ValueErrors
        raise WireError(f"bad stanza XML: {exc}") from None
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


def decode_control(payload: bytes) -> Control:
    try:
        data = json.loads(payload)
        op = Op(data.pop("op"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"bad CONTROL frame: {exc!r}") from None
    return Control(op, data)


def check_origin(stanza: ET.Element, domain: str) -> None:
    """A routed stanza's `from` must be the cluster's domain or one of its accounts."""
    try:
        sender = JID.parse(stanza.get("from") or "")
    except InvalidJid:
        raise WireError(f"routed stanza with a bad 'from' {stanza.get('from')!r}") from None
    if sender.domain != domain:
        raise WireError(f"routed stanza from outside the cluster's domain: {sender}")
