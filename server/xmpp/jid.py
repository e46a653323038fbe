"""JIDs (RFC 7622): parse, validate, compare.

Rules: a `JID` is immutable and always valid; `JID.parse` raises `InvalidJid` with the
reason. Localpart and domain are case-folded (a practical subset of the PRECIS
profiles: NFKC + casefold, forbidden characters rejected), the resource is kept as
given (NFC). Each part is at most 1023 bytes (RFC 7622 §3.1).
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass, field

MAX_PART_BYTES = 1023
# RFC 7622 §3.3.1: characters a localpart may not contain.
LOCALPART_FORBIDDEN = frozenset('"&\'/:<>@')


class InvalidJid(ValueError):
    """The text is not a valid JID; the message says why."""


def _check_part(value: str, what: str) -> None:
    if not value:
        raise InvalidJid(f"empty {what}")
    # ASCII fast path (JID parsing is on every routed stanza): there the only forbidden
    # characters are the controls (Cc: not printable) and, outside a resource, U+0020.
    if (value.isascii() and len(value) <= MAX_PART_BYTES and value.isprintable()
            and (what == "resource" or " " not in value)):
        return
    if len(value.encode("utf-8")) > MAX_PART_BYTES:
        raise InvalidJid(f"{what} longer than {MAX_PART_BYTES} bytes")
    for ch in value:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Co", "Cn") or (cat == "Zs" and what != "resource"):
            raise InvalidJid(f"{what} contains a forbidden character U+{ord(ch):04X}")


def _fold(value: str) -> str:
    """NFKC + casefold; ASCII is NFKC already and folds as `lower()`."""
    return value.lower() if value.isascii() else unicodedata.normalize("NFKC", value).casefold()


def prep_localpart(value: str) -> str:
    value = _fold(value)
    _check_part(value, "localpart")
    bad = LOCALPART_FORBIDDEN.intersection(value)
    if bad:
        raise InvalidJid(f"localpart contains forbidden character {sorted(bad)[0]!r}")
    return value


def prep_domain(value: str) -> str:
    value = _fold(value).rstrip(".")
    _check_part(value, "domain")
    if any(ch in value for ch in "@/ ") or value.startswith(".") or ".." in value:
        raise InvalidJid(f"invalid domain {value!r}")
    return value


def prep_resource(value: str) -> str:
    if not value.isascii():  # ASCII is NFC already
        value = unicodedata.normalize("NFC", value)
    _check_part(value, "resource")
    return value


@dataclass(frozen=True, slots=True)
class JID:
    local: str | None
    domain: str
    resource: str | None = None
    # Made once, when first asked for (each is read per stanza, and most JIDs come
    # from the parse cache): the bare JID of a full one, and the text.
    _bare: JID | None = field(default=None, init=False, repr=False, compare=False)
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> JID:
        if not isinstance(text, str) or not text:
            raise InvalidJid("empty JID")
        return _parse(text)

    @classmethod
    def _parse_uncached(cls, text: str) -> JID:
        rest, slash, resource = text.partition("/")
        if slash and not resource:
            raise InvalidJid("empty resource")
        local, at, domain = rest.rpartition("@")
        if at and not local:
            raise InvalidJid("empty localpart")
        return cls.make(local or None, domain, resource or None)

    @classmethod
    def make(cls, local: str | None, domain: str, resource: str | None = None) -> JID:
        return cls(
            prep_localpart(local) if local is not None else None,
            prep_domain(domain),
            prep_resource(resource) if resource is not None else None,
        )

    @property
    def bare(self) -> JID:
        if self.resource is None:
            return self
        bare = self._bare
        if bare is None:
            bare = JID(self.local, self.domain)
            object.__setattr__(self, "_bare", bare)
        return bare

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    @property
    def is_domain(self) -> bool:
        return self.local is None and self.resource is None

    def with_resource(self, resource: str) -> JID:
        return JID(self.local, self.domain, prep_resource(resource))

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self.domain if self.local is None else f"{self.local}@{self.domain}"
            if self.resource is not None:
                text = f"{text}/{self.resource}"
            object.__setattr__(self, "_text", text)
        return text


# Every routed stanza parses its addresses, mostly the same few: the prepared JIDs
# (immutable) of the latest texts are kept (stringprep was ~10% of a node's CPU per
# message). Bounded, ~1 MB; an invalid text raises and is not kept.
_parse = functools.lru_cache(maxsize=4096)(JID._parse_uncached)
