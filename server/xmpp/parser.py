"""Incremental parser of one inbound XMPP stream, restricted as RFC 6120 §11.1 demands.

Rules of this module:
- Pure and incremental: `feed(bytes)` returns the parse events completed so far
  (`HeaderParsed`, `ElementParsed`, `FooterParsed`); the first fault ends the list with
  `ParseFault(StreamError)` and the parser is dead afterwards.
- Restricted XML (§11.1): a DTD, an entity declaration, a reference to any entity other
  than the five predefined ones, a processing instruction or a comment is
  `restricted-xml`. Anything expat finds malformed is `not-well-formed`; a declared
  encoding other than UTF-8 is `unsupported-encoding` (§11.6).
- A top-level element bigger than `max_element_bytes` is `policy-violation`, detected
  while it arrives (not after it was buffered whole); nesting deeper than `MAX_DEPTH`
  is `policy-violation` too. Non-whitespace text between stanzas is `bad-format`;
  whitespace keepalives vanish.
- Pending input is bounded (`ParserLimits`, all `policy-violation`): the stream header
  with all that precedes it (`header_bytes`), its namespace declarations
  (`header_namespaces`: `xmlns` is counted in the raw input while the header is
  incomplete, exactly once expat has it), and any incomplete token after it, i.e. a start or end tag
  still open (`tag_bytes`). The tag bound holds before the element counts toward
  `max_element_bytes` (an element is only sized once its start tag is complete).
  Expat rescans an incomplete token on every `Parse()`, so while one is pending, input
  without a `>` (no tag, hence no event, can complete without one) is held back and
  parsed at once when a `>` arrives: an endless tag costs linear time, not quadratic.
- Names come out in Clark notation, `jabber:client` unqualified (see `stanzas`).
- A stream restart (after STARTTLS or SASL) uses a fresh parser: the stream core makes
  a new `StreamParser`; bytes the old one had not seen yet are dropped by design
  (RFC 6120 §5.4.3.3: nothing sent before the TLS handshake may be acted upon).
- Between stanzas the expat parser is released: when input ends with a complete
  top-level element and whitespace, nothing is pending, so the parser (~15 kB with its
  handlers, most of an idle session's Python memory) is dropped. The next input gets a
  fresh one, primed with a synthetic stream header that re-declares the namespaces of
  the peer's header (no event comes out of it). Whitespace alone needs no parser.
  A header whose declarations make a primer longer than `PRIMER_RELEASE_BYTES` keeps
  its parser instead, so no stanza's cost depends on the size of the header.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import xml.parsers.expat as expat
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from presence_ha.server.xmpp.errors import StreamCondition, StreamError
from presence_ha.server.xmpp.stanzas import MAX_DEPTH, NS_CLIENT, NS_STREAM

SEPARATOR = " "  # cannot occur in a namespace name (a URI) or a local name
FEED_SLICE = 16 * 1024  # the size limit is checked at least every slice
TEXT_BUFFER = 1024  # bytes of character data expat gathers per callback (default 8 kB)
PRIMER_RELEASE_BYTES = 512  # a longer primer is not re-parsed per stanza: the parser is kept
_WHITESPACE = b" \t\r\n"
_QNAME = re.compile(rb"<([^\s/>]+)")
_TAG = re.compile(rb"[^'\">]*(?:(?:'[^']*'|\"[^\"]*\")[^'\">]*)*>")  # a tag, up to its closing '>'


_RESTRICTED_CODES = {
    expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY],
    expat.errors.codes[expat.errors.XML_ERROR_RECURSIVE_ENTITY_REF],
    expat.errors.codes[expat.errors.XML_ERROR_EXTERNAL_ENTITY_HANDLING],
    expat.errors.codes[expat.errors.XML_ERROR_ENTITY_DECLARED_IN_PE],
}
_ENCODING_CODES = {
    expat.errors.codes[expat.errors.XML_ERROR_UNKNOWN_ENCODING],
    expat.errors.codes[expat.errors.XML_ERROR_INCORRECT_ENCODING],
}


@dataclass(frozen=True)
class HeaderParsed:
    """The peer's `<stream:stream>` open tag."""

    name: str  # Clark name of the root element (should be {streams}stream)
    attrs: dict[str, str]
    default_ns: str | None  # the default namespace declared on the header


@dataclass(slots=True)  # made per stanza: not frozen (a frozen __init__ costs 3x)
class ElementParsed:
    """A complete top-level element (stanza or nonza)."""

    element: ET.Element = field(compare=False)


@dataclass(frozen=True)
class FooterParsed:
    """The peer closed its stream with `</stream:stream>`."""


@dataclass(frozen=True)
class ParseFault:
    error: StreamError


ParseEvent = HeaderParsed | ElementParsed | FooterParsed | ParseFault


@dataclass(frozen=True)
class ParserLimits:
    """Bounds of pending input (see module rules); defaults: before authentication."""

    header_bytes: int = 4096  # the stream header and anything before it
    header_namespaces: int = 16  # namespace declarations on the stream header
    tag_bytes: int | None = None  # an incomplete tag or token after the header; None: max_element_bytes


def _restricted(what: str) -> StreamError:
    return StreamError(StreamCondition.RESTRICTED_XML, f"{what} not allowed in XMPP (RFC 6120 §11.1)")


def _refusing(what: str) -> Callable[..., None]:
    def handler(*_args: object) -> None:
        raise _restricted(what)  # propagates out of expat's Parse() into _feed_slice
    return handler


# Shared by every parser (one closure per handler per parser cost a fresh parser ~1 us).
_RESTRICTED_HANDLERS = {
    "StartDoctypeDeclHandler": _refusing("a DTD"),
    "EntityDeclHandler": _refusing("an entity declaration"),
    "UnparsedEntityDeclHandler": _refusing("an entity declaration"),
    "NotationDeclHandler": _refusing("a notation declaration"),
    "ProcessingInstructionHandler": _refusing("a processing instruction"),
    "CommentHandler": _refusing("a comment"),
    "ExternalEntityRefHandler": _refusing("an external entity"),
    "SkippedEntityHandler": _refusing("an entity reference"),
}


def clark(name: str) -> str:
    """Expat's `uri local` name as Clark notation; `jabber:client` unqualified."""
    uri, sep, local = name.rpartition(SEPARATOR)
    if not sep or uri == NS_CLIENT:
        return local
    return f"{{{uri}}}{local}"


def _policy(text: str) -> StreamError:
    return StreamError(StreamCondition.POLICY_VIOLATION, text)


class StreamParser:
    def __init__(self, max_element_bytes: int, limits: ParserLimits | None = None) -> None:
        self.max_element_bytes = max_element_bytes
        self.limits = limits = limits or ParserLimits()
        self._max_tag = min(limits.tag_bytes or max_element_bytes, max_element_bytes)
        self._held: bytearray | None = None  # input held back while a token is pending (module rules)
        self._pending = 0  # bytes of the token expat has not completed yet
        self._raw_declarations = 0  # `xmlns` seen in input while the header is incomplete
        self._events: list[ParseEvent] = []
        self._depth = 0
        self._builder: ET.TreeBuilder | None = None
        self._element_start = 0
        self._fed = 0
        self._dead = False
        self._pending_default_ns: str | None = None
        self._declared: list[tuple[str | None, str]] = []  # the header's namespace declarations
        self._header_open = False  # seen the header: a fresh expat needs a synthetic one
        self._root_qname = b"stream:stream"  # the header's name as written (the footer must match)
        self._primer: bytes | None = None  # that synthetic header, once needed
        self._last_close = -1  # byte index (in this expat's input) of the last top-level close tag
        self._parser: expat.XMLParserType | None = self._make_expat()

    def _make_expat(self, primer: bytes = b"") -> expat.XMLParserType:
        """A fresh expat; `primer` (a synthetic stream header) is parsed before any handler
        is set, so it costs no Python callback and yields no event."""
        p = expat.ParserCreate("UTF-8", SEPARATOR)
        # pyexpat's text buffer defaults to 8 kB per parser, i.e. per idle session; text
        # longer than this arrives in several CharacterData calls, which `_on_text` joins.
        p.buffer_size = TEXT_BUFFER
        p.buffer_text = True
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        if primer:
            p.Parse(primer, False)
        p.StartElementHandler = self._on_start
        p.EndElementHandler = self._on_end
        p.CharacterDataHandler = self._on_text
        p.StartNamespaceDeclHandler = self._on_ns_decl
        p.XmlDeclHandler = self._on_xml_decl
        for name, handler in _RESTRICTED_HANDLERS.items():
            setattr(p, name, handler)
        return p

    @property
    def dead(self) -> bool:
        return self._dead

    def feed(self, data: bytes) -> list[ParseEvent]:
        """Parse `data`; return every event completed so far."""
        if self._parser is None and not self._dead:
            if not data.strip(_WHITESPACE):
                return []  # a keepalive between stanzas
            self._parser = self._primed_expat()
        header_pending = not self._header_open
        if self._pending and b">" not in data:
            self._hold(data)
        else:
            if self._held is not None:
                self._held += data
                data, self._held = bytes(self._held), None
            for start in range(0, len(data), FEED_SLICE):
                if self._dead:
                    break
                self._feed_slice(data[start : start + FEED_SLICE])
            if not self._dead and self._idle_after(data) and len(self._primer or b"") <= PRIMER_RELEASE_BYTES:
                self._parser = None
        if header_pending and not self._header_open:
            self._count_declarations(data)
        events, self._events = self._events, []
        return events

    def _count_declarations(self, data: bytes) -> None:
        """Input of a header still incomplete: count its `xmlns` as they arrive, so that
        expat never has to take in a tag of thousands of declarations (it counts exactly
        once the header is complete: `_on_ns_decl`)."""
        self._raw_declarations += data.count(b"xmlns")
        if self._raw_declarations > self.limits.header_namespaces:
            self._record_fault(self._too_many_declarations())

    def _too_many_declarations(self) -> StreamError:
        return _policy(f"more than {self.limits.header_namespaces} namespace declarations on the stream header")

    def _hold(self, data: bytes) -> None:
        """Keep `data` unparsed: the pending token cannot complete without a `>`."""
        if self._dead:
            return
        if self._held is None:
            self._held = bytearray()
        self._held += data
        self._pending += len(data)
        self._check_pending(self._fed + len(self._held))

    def _check_pending(self, fed: int) -> None:
        """Fault if the header (all of `fed` while it is open) or the pending token is too big."""
        if not self._header_open:
            if fed > self.limits.header_bytes:
                self._record_fault(_policy(f"stream header larger than {self.limits.header_bytes} bytes"))
        elif self._pending > self._max_tag:
            self._record_fault(_policy(f"tag larger than {self._max_tag} bytes"))
        elif self._builder is not None and fed - self._element_start > self.max_element_bytes:
            self._record_fault(self._too_big())

    def _primed_expat(self) -> expat.XMLParserType:
        if self._primer is None:  # the peer's header, as a fresh expat needs it (built once)
            declared = "".join(
                f" xmlns{':' + prefix if prefix else ''}={quoteattr(uri)}" for prefix, uri in self._declared
            )
            self._primer = b"<" + self._root_qname + declared.encode() + b">"
        parser = self._parser = self._make_expat(self._primer)
        self._depth = 1  # inside the (synthetic) stream header
        self._fed, self._last_close, self._pending = len(self._primer), -1, 0
        return parser

    def _idle_after(self, data: bytes) -> bool:
        """True if `data` (just fed) ended with a complete top-level element and whitespace."""
        if not self._header_open or self._depth != 1 or self._builder is not None:
            return False
        start = self._last_close - (self._fed - len(data))  # the close tag's offset in `data`
        if start < 0:
            return False  # it began in earlier input: keep the parser (rare)
        end = _tag_end(data, start)
        return end is not None and not data[end:].strip(_WHITESPACE)

    def _feed_slice(self, chunk: bytes) -> None:
        assert self._parser is not None
        try:
            self._parser.Parse(chunk, False)
        except StreamError as exc:
            self._record_fault(exc)
            return
        except expat.ExpatError as exc:
            self._record_fault(self._translate(exc))
            return
        self._fed += len(chunk)
        parsed_to = self._parser.CurrentByteIndex  # the start of the token expat holds, if any
        self._pending = self._fed - parsed_to if 0 <= parsed_to <= self._fed else self._fed
        self._check_pending(self._fed)

    def _translate(self, exc: expat.ExpatError) -> StreamError:
        message = expat.errors.messages.get(exc.code, str(exc))
        if exc.code in _RESTRICTED_CODES:
            return _restricted("an entity reference")
        if exc.code in _ENCODING_CODES:
            return StreamError(StreamCondition.UNSUPPORTED_ENCODING, "XMPP streams are UTF-8 (RFC 6120 §11.6)")
        return StreamError(StreamCondition.NOT_WELL_FORMED, f"{message} at line {exc.lineno}, column {exc.offset}")

    def _too_big(self) -> StreamError:
        return _policy(f"stanza larger than {self.max_element_bytes} bytes")

    def _record_fault(self, error: StreamError) -> None:
        if not self._dead:
            self._dead = True
            self._events.append(ParseFault(error))

    def _fail(self, error: StreamError) -> None:
        raise error  # propagates out of expat's Parse() into _feed_slice

    # -- expat callbacks ------------------------------------------------------
    def _on_xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.replace("_", "-").lower() not in ("utf-8", "utf8"):
            self._fail(StreamError(StreamCondition.UNSUPPORTED_ENCODING, f"encoding {encoding!r}; use UTF-8"))

    def _on_ns_decl(self, prefix: str | None, uri: str | None) -> None:
        if self._depth == 0:
            if len(self._declared) >= self.limits.header_namespaces:
                self._fail(self._too_many_declarations())
            self._declared.append((prefix, uri or ""))
            if prefix is None:
                self._pending_default_ns = uri or ""

    def _on_start(self, name: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == 1:
            self._header_open = True
            assert self._parser is not None  # expat is calling us
            context = self._parser.GetInputContext() or b""  # from the header's '<' on
            written = _QNAME.match(context)
            if written is not None:
                self._root_qname = written.group(1)
            tag = _TAG.match(context)
            if tag is not None and self._parser.CurrentByteIndex + tag.end() > self.limits.header_bytes:
                self._fail(_policy(f"stream header larger than {self.limits.header_bytes} bytes"))
            header_attrs = {clark(k): v for k, v in attrs.items()}
            self._events.append(HeaderParsed(clark(name), header_attrs, self._pending_default_ns))
            return
        attrib = {clark(k): v for k, v in attrs.items()}
        if self._depth > MAX_DEPTH:
            self._fail(StreamError(StreamCondition.POLICY_VIOLATION, f"elements nested deeper than {MAX_DEPTH}"))
        if self._depth == 2:
            self._builder = ET.TreeBuilder()
            assert self._parser is not None  # expat is calling us
            self._element_start = self._parser.CurrentByteIndex
        assert self._builder is not None
        self._builder.start(clark(name), attrib)

    def _on_end(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._events.append(FooterParsed())
            return
        assert self._builder is not None
        self._builder.end(clark(name))
        if self._depth == 1:
            assert self._parser is not None  # expat is calling us
            self._last_close = self._parser.CurrentByteIndex
            size = self._last_close - self._element_start
            if size > self.max_element_bytes:
                self._fail(self._too_big())
            self._events.append(ElementParsed(self._builder.close()))
            self._builder = None

    def _on_text(self, text: str) -> None:
        if self._builder is not None:
            self._builder.data(text)
        elif self._depth == 1 and text.strip():
            self._fail(StreamError(StreamCondition.BAD_FORMAT, "text between stanzas"))


def _tag_end(data: bytes, start: int) -> int | None:
    """The offset just past the tag that closed a top-level element, or None if input
    is pending. Expat reports a close at the `<` of `</x>` but just past `<x .../>`;
    a `<` found there opens a tag (a `>` inside a quoted attribute does not end it),
    which is only complete here if it is the `<x .../>` itself."""
    if data[start : start + 1] != b"<":
        return start
    quote = 0
    for i in range(start + 1, len(data)):
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):  # " or '
            quote = c
        elif c == 0x3E:  # >
            return i + 1
    return None


def is_stream_header(event: HeaderParsed) -> bool:
    return event.name == f"{{{NS_STREAM}}}stream"
