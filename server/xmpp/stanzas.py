"""Stanza and nonza (de)serialization: namespaces, a clean serializer, small builders.

Rules of this module:
- In memory a stanza is an `xml.etree.ElementTree.Element`: `jabber:client` elements
  unqualified (`message`, `body`), every other namespace in Clark notation
  (`{urn:xmpp:ping}ping`). Parsing lives in `server.xmpp.parser`.
- `serialize` writes what a human would write: one `xmlns='...'` declaration where the
  default namespace changes, never `ns0:` prefixes; `xml:lang` keeps its `xml` prefix;
  elements of the streams namespace use the `stream:` prefix declared by the header.
- The serializer never recurses without bound: the parser caps nesting depth
  (`MAX_DEPTH`), and builders only produce shallow trees.
- Closed value sets are enums (`MessageType`, `PresenceType`, `IqType`,
  `Subscription`), compared by identity inside the node. `X.of(stanza)` reads the
  `type` attribute with one dict lookup (hot path: no parse, no `Enum()` call); the
  attribute's text is `member.value` (`PresenceType.AVAILABLE.value` is None: no
  attribute). An unknown attribute value is None: the caller decides what it means.
- Pure functions, no I/O.
"""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"  # XEP-0440
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"
NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_VERSION = "jabber:iq:version"

STANZA_TAGS = frozenset({"message", "presence", "iq"})


class MessageType(enum.Enum):
    """RFC 6121 §5.2.2."""

    CHAT = "chat"
    ERROR = "error"
    GROUPCHAT = "groupchat"
    HEADLINE = "headline"
    NORMAL = "normal"

    @staticmethod
    def of(stanza: ET.Element) -> MessageType | None:
        """The message's type: NORMAL without the attribute (§5.2.2), None if unknown."""
        return _MESSAGE_TYPES.get(stanza.get("type"))


class PresenceType(enum.Enum):
    """RFC 6121 §4.7.1 (availability, probe, error) and §3 (subscriptions)."""

    AVAILABLE = None  # no type attribute (§4.7.1)
    UNAVAILABLE = "unavailable"
    PROBE = "probe"
    ERROR = "error"
    SUBSCRIBE = "subscribe"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBE = "unsubscribe"
    UNSUBSCRIBED = "unsubscribed"

    @staticmethod
    def of(stanza: ET.Element) -> PresenceType | None:
        """The presence's type; None if the attribute holds an unknown value."""
        return _PRESENCE_TYPES.get(stanza.get("type"))


class IqType(enum.Enum):
    """RFC 6120 §8.2.3."""

    GET = "get"
    SET = "set"
    RESULT = "result"
    ERROR = "error"

    @staticmethod
    def of(stanza: ET.Element) -> IqType | None:
        return _IQ_TYPES.get(stanza.get("type"))


class Subscription(enum.Enum):
    """A roster item's subscription state (RFC 6121 §2.1.2.5), from the user's side."""

    NONE = "none"
    TO = "to"  # the user sees the contact's presence
    FROM = "from"  # the contact sees the user's presence
    BOTH = "both"

    @property
    def has_to(self) -> bool:
        return self is Subscription.TO or self is Subscription.BOTH

    @property
    def has_from(self) -> bool:
        return self is Subscription.FROM or self is Subscription.BOTH

    @staticmethod
    def parse(text: str) -> Subscription:
        """The state a stored (or received) attribute value names; ValueError if none."""
        found = _SUBSCRIPTIONS.get(text)
        if found is None:
            raise ValueError(f"not a subscription state: {text!r}")
        return found


_MESSAGE_TYPES: dict[str | None, MessageType] = {t.value: t for t in MessageType}
_MESSAGE_TYPES[None] = MessageType.NORMAL
_PRESENCE_TYPES: dict[str | None, PresenceType] = {t.value: t for t in PresenceType}
_IQ_TYPES: dict[str | None, IqType] = {t.value: t for t in IqType}
_SUBSCRIPTIONS: dict[str, Subscription] = {s.value: s for s in Subscription}


def type_values(*types: MessageType | PresenceType | IqType) -> tuple[str | None, ...]:
    """The `type` attribute values of `types` (route keys of `server.router`)."""
    return tuple(t.value for t in types)
MAX_DEPTH = 64  # nesting limit enforced by the parser; keeps recursion bounded

_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"})


def qname(ns: str, local: str) -> str:
    """The Clark name of `local` in `ns` (`jabber:client` stays unqualified)."""
    return local if ns == NS_CLIENT else f"{{{ns}}}{local}"


def split_tag(tag: str) -> tuple[str, str]:
    """`(namespace, local name)` of a Clark tag; unqualified means `jabber:client`."""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return NS_CLIENT, tag


# Most text needs no escaping: a search skips it (0.3 us) where translate costs 1.7 us.
_TEXT_SPECIAL = re.compile(r"[&<>]")
_ATTR_SPECIAL = re.compile(r"[&<>'\"]")


def escape_text(text: str) -> str:
    return text.translate(_TEXT_ESCAPES) if _TEXT_SPECIAL.search(text) else text


def escape_attr(text: str) -> str:
    return text.translate(_ATTR_ESCAPES) if _ATTR_SPECIAL.search(text) else text


def _attributes(elem: ET.Element, extra_decls: list[str]) -> str:
    parts: list[str] = []
    for key, value in elem.attrib.items():
        if key.startswith("{"):
            ns, local = split_tag(key)
            if ns == NS_XML:
                key = f"xml:{local}"
            else:
                prefix = f"a{len(extra_decls)}"
                extra_decls.append(f" xmlns:{prefix}='{escape_attr(ns)}'")
                key = f"{prefix}:{local}"
        parts.append(f" {key}='{escape_attr(str(value))}'")
    return "".join(parts)


def _write(elem: ET.Element, default_ns: str, out: list[str]) -> None:
    ns, local = split_tag(elem.tag)
    decls: list[str] = []
    if ns == NS_STREAM:
        name, inner_default = f"stream:{local}", default_ns
    else:
        name, inner_default = local, ns
        if ns != default_ns:
            decls.append(f" xmlns='{escape_attr(ns)}'")
    attrs = _attributes(elem, decls)
    out.append(f"<{name}{''.join(decls)}{attrs}")
    if len(elem) == 0 and not elem.text:
        out.append("/>")
    else:
        out.append(">")
        if elem.text:
            out.append(escape_text(elem.text))
        for child in elem:
            _write(child, inner_default, out)
            if child.tail:
                out.append(escape_text(child.tail))
        out.append(f"</{name}>")


def serialize(elem: ET.Element, default_ns: str = NS_CLIENT) -> str:
    """`elem` as XML text inside a stream whose default namespace is `default_ns`."""
    out: list[str] = []
    _write(elem, default_ns, out)
    return "".join(out)


def to_bytes(elem: ET.Element) -> bytes:
    return serialize(elem).encode("utf-8")


def stream_header(*, stream_id: str, domain: str, to: str | None, lang: str = "en") -> bytes:
    """The server's stream header (RFC 6120 §4.7), with an XML declaration."""
    to_attr = f" to='{escape_attr(to)}'" if to else ""
    return (
        "<?xml version='1.0'?>"
        f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'"
        f" id='{escape_attr(stream_id)}' from='{escape_attr(domain)}'{to_attr}"
        f" version='1.0' xml:lang='{escape_attr(lang)}'>"
    ).encode()


STREAM_FOOTER = b"</stream:stream>"


def stream_error(condition: str, text: str | None = None, other_host: str | None = None) -> ET.Element:
    """`<stream:error/>` (RFC 6120 §4.9.2); `other_host` is see-other-host's content."""
    error = ET.Element(f"{{{NS_STREAM}}}error")
    cond = ET.SubElement(error, f"{{{NS_STREAMS_ERR}}}{condition}")
    if other_host:
        cond.text = other_host
    if text:
        text_elem = ET.SubElement(error, f"{{{NS_STREAMS_ERR}}}text")
        text_elem.text = text
    return error


def iq_result(request: ET.Element, payload: ET.Element | None = None, to: str | None = None) -> ET.Element:
    """The result answering IQ `request`."""
    result = ET.Element("iq", {"type": "result"})
    stanza_id = request.get("id")
    if stanza_id is not None:
        result.set("id", stanza_id)
    if to:
        result.set("to", to)
    if payload is not None:
        result.append(payload)
    return result


def readdressed(stanza: ET.Element, to: object, sender: object | None = None) -> ET.Element:
    """A shallow copy of `stanza` (children shared) sent to `to`, and from `sender` if given."""
    copy = ET.Element(stanza.tag, dict(stanza.attrib))
    copy.extend(list(stanza))
    copy.set("to", str(to))
    if sender is not None:
        copy.set("from", str(sender))
    return copy


def presence(type_: PresenceType, sender: object, to: object) -> ET.Element:
    """`<presence type='...' from='sender' to='to'/>` (no type attribute for AVAILABLE)."""
    stanza = ET.Element("presence", {"from": str(sender), "to": str(to)})
    if type_.value is not None:
        stanza.set("type", type_.value)
    return stanza


def element(tag: str, attrib: dict[str, str] | None = None, text: str | None = None) -> ET.Element:
    """A leaf element with optional attributes and text."""
    elem = ET.Element(tag, attrib or {})
    if text is not None:
        elem.text = text
    return elem


def child_text(parent: ET.Element, tag: str) -> str | None:
    child = parent.find(tag)
    return None if child is None else (child.text or "")
