"""JIDs (RFC 7622): parse, validate, compare.

Rules: a `JID` is immutable and always valid; `JID.parse` raises `InvalidJid` with the
reason. The parts are prepared by the PRECIS profiles of RFC 7622 §3, through the
maintained `precis_i18n` library (not hand-written rules): the localpart by
UsernameCaseMapped (RFC 8265 §3.3: case-mapped, compatibility characters such as
U+017F and ignorables such as U+200B refused), the resource by OpaqueString (RFC 8265
§4.2), the domain by IDNA2008 (`idna`, UTS #46 mapping) for non-ASCII names. Printable
ASCII takes a fast path whose result is the same as the profile's (JID parsing is on
every routed stanza). Each part is at most 1023 bytes (RFC 7622 §3.1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import idna
from precis_i18n import get_profile
from precis_i18n.profile import Profile

MAX_PART_BYTES = 1023
# RFC 7622 §3.3.1: characters a localpart may not contain.
LOCALPART_FORBIDDEN = frozenset('"&\'/:<>@')
USERNAME = get_profile("UsernameCaseMapped")  # RFC 8265 §3.3 (localparts, SASL usernames)
OPAQUE = get_profile("OpaqueString")  # RFC 8265 §4.2 (resourceparts, passwords)


class InvalidJid(ValueError):
    """The text is not a valid JID; the message says why."""


def _check_length(value: str, what: str) -> None:
    if not value:
        raise InvalidJid(f"empty {what}")
    if len(value) > MAX_PART_BYTES or len(value.encode("utf-8")) > MAX_PART_BYTES:
        raise InvalidJid(f"{what} longer than {MAX_PART_BYTES} bytes")


def _enforce(profile: Profile, value: str, what: str) -> str:
    try:
        result: str = profile.enforce(value)
    except UnicodeError as exc:  # precis_i18n's refusal names the code point and why
        reason = getattr(exc, "reason", str(exc))
        where = getattr(exc, "start", None)
        bad = f" U+{ord(value[where]):04X}" if isinstance(where, int) and where < len(value) else ""
        raise InvalidJid(f"{what} not allowed by PRECIS{bad}: {reason}") from None
    return result


def prep_localpart(value: str) -> str:
    """RFC 7622 §3.3: UsernameCaseMapped, then the localpart's forbidden characters."""
    if value.isascii() and value.isprintable() and " " not in value:
        value = value.lower()  # the profile's result for printable ASCII
    else:
        if len(value) > 4 * MAX_PART_BYTES:
            raise InvalidJid(f"localpart longer than {MAX_PART_BYTES} bytes")
        value = _enforce(USERNAME, value, "localpart")
    _check_length(value, "localpart")
    bad = LOCALPART_FORBIDDEN.intersection(value)
    if bad:
        raise InvalidJid(f"localpart contains forbidden character {sorted(bad)[0]!r}")
    return value


def prep_domain(value: str) -> str:
    """RFC 7622 §3.2: an ASCII name lower-cased; a non-ASCII one through IDNA2008 (its
    U-label form). A trailing dot is dropped."""
    value = value.rstrip(".") if value.endswith(".") else value
    if value.isascii():
        value = value.lower()
        if not value.isprintable():
            raise InvalidJid("domain contains a control character")
    else:
        if len(value) > 4 * MAX_PART_BYTES:
            raise InvalidJid(f"domain longer than {MAX_PART_BYTES} bytes")
        try:
            value = idna.decode(idna.encode(value, uts46=True))
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidJid(f"invalid internationalized domain: {exc}") from None
    _check_length(value, "domain")
    if any(ch in value for ch in "@/ ") or value.startswith(".") or ".." in value:
        raise InvalidJid(f"invalid domain {value!r}")
    return value


def prep_resource(value: str) -> str:
    """RFC 7622 §3.4: OpaqueString (printable ASCII, spaces included, is kept as is)."""
    if not (value.isascii() and value.isprintable()):
        if len(value) > 4 * MAX_PART_BYTES:
            raise InvalidJid(f"resource longer than {MAX_PART_BYTES} bytes")
        value = _enforce(OPAQUE, value, "resource")
    _check_length(value, "resource")
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
