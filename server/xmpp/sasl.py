"""Server side of one SASL exchange (RFC 6120 §6, RFC 5802/7677 SCRAM, RFC 4616 PLAIN).

Rules of this module:
- Sans-IO: a `SaslExchange` takes the decoded payloads of `<auth/>`/`<response/>` and
  stored keys, and returns one `Step` (`Challenge`, `NeedCredentials`, `Verified`,
  `Failed`). The host fetches the keys (`NeedCredentials`) and calls `credentials()`.
- Only salted SCRAM keys exist (RFC 5802 §3): SCRAM runs on `scramp` with the stored
  keys; PLAIN (offered over TLS only) is checked against the SCRAM-SHA-256 keys by
  deriving SaltedPassword from the given password. Plaintext is never stored.
- That derivation (PBKDF2, 4,096 rounds: ~11% of login CPU) is the host's job:
  PLAIN answers the keys with `NeedDerivation`, the host runs `salted_password` off the
  event loop (hashlib releases the GIL) and hands the result to `derived()`.
- An unknown user runs the same exchange against keys derived from a secret (SCRAM:
  the same messages; PLAIN: the same PBKDF2 derivation, same iteration count), so the
  failure looks and takes the same as a wrong password (no user enumeration).
- Names and passwords are prepared by the PRECIS profiles of RFC 8265: the username
  (authcid) by UsernameCaseMapped (`jid.prep_localpart`), a PLAIN password by
  OpaqueString, then by SASLprep as the stored keys were (scramp's `make_auth_info`;
  the two agree on every OpaqueString-valid ASCII password). A name PRECIS refuses
  cannot exist: it fails like an unknown user.
- Failures use the RFC 6120 §6.5 conditions: garbage base64 -> `incorrect-encoding`,
  unparsable payloads -> `malformed-request`, wrong password -> `not-authorized`.
- Channel binding (RFC 5802 §6, RFC 9266): SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS run
  when the host gives the exchange the connection's `ChannelBinding` (it offered -PLUS).
  They use the stored keys of their base mechanism (no other keys, no other query). The
  gs2 header decides before the keys are fetched: -PLUS needs `p=<type>` of a type the
  connection offers; a base mechanism refuses `p=`, and refuses `y` when -PLUS was
  offered (RFC 5802 §6: a client that thinks the server cannot bind was downgraded).
  Those refusals, and channel-binding data that do not match (`c=`), are `not-authorized`.
  -PLUS messages are computed here (`_PlusServer`): scramp refuses tls-exporter.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError, saslprep

from presence_ha.server.xmpp.jid import OPAQUE, InvalidJid, prep_localpart

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
PLUS_SUFFIX = "-PLUS"
SCRAM_PLUS_MECHANISMS = tuple(m + PLUS_SUFFIX for m in SCRAM_MECHANISMS)
PLAIN = "PLAIN"
PLAIN_KEYS_MECHANISM = "SCRAM-SHA-256"  # PLAIN is verified against these keys
_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-1": hashlib.sha1}


class SaslCondition(enum.Enum):
    """RFC 6120 §6.5 SASL failure conditions."""

    ABORTED = "aborted"
    ACCOUNT_DISABLED = "account-disabled"
    CREDENTIALS_EXPIRED = "credentials-expired"
    ENCRYPTION_REQUIRED = "encryption-required"
    INCORRECT_ENCODING = "incorrect-encoding"
    INVALID_AUTHZID = "invalid-authzid"
    INVALID_MECHANISM = "invalid-mechanism"
    MALFORMED_REQUEST = "malformed-request"
    MECHANISM_TOO_WEAK = "mechanism-too-weak"
    NOT_AUTHORIZED = "not-authorized"
    TEMPORARY_AUTH_FAILURE = "temporary-auth-failure"


class _Stage(enum.Enum):
    START = "start"
    AWAIT_FIRST = "await-first"  # sent an empty challenge; the client-first comes next
    AWAIT_KEYS = "await-keys"  # the host is fetching the stored keys
    AWAIT_DERIVATION = "await-derivation"  # PLAIN: the host is deriving SaltedPassword
    CHALLENGED = "challenged"  # sent server-first; the client-final comes next
    DONE = "done"


class StoredKeys(Protocol):
    """What the database keeps per user and hash (db.users.ScramCredentials)."""

    @property
    def salt(self) -> bytes: ...
    @property
    def iterations(self) -> int: ...
    @property
    def stored_key(self) -> bytes: ...
    @property
    def server_key(self) -> bytes: ...


class ChannelBinding(Protocol):
    """The TLS channel bindings of the connection (server.tls_binding.TlsBinding)."""

    def types(self) -> tuple[str, ...]: ...
    def data(self, cb_type: str) -> bytes | None: ...


class _ScramServer(Protocol):
    """The part of scramp's ScramServer used here (scramp ships no type information)."""

    def set_client_first(self, client_first: str) -> None: ...
    def get_server_first(self) -> str: ...
    def set_client_final(self, client_final: str) -> None: ...
    def get_server_final(self) -> str: ...


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class NeedCredentials:
    username: str
    mechanism: str  # whose keys to fetch: SCRAM-SHA-256 or SCRAM-SHA-1


@dataclass(frozen=True)
class NeedDerivation:
    """PLAIN: derive SaltedPassword with `salted_password(...)`, then call `derived()`."""

    password: bytes = field(repr=False)  # OpaqueString + SASLprep, UTF-8
    salt: bytes
    iterations: int


@dataclass(frozen=True)
class Verified:
    username: str
    additional: bytes | None  # SCRAM server-final message, sent in <success/>


@dataclass(frozen=True)
class Failed:
    condition: SaslCondition
    text: str | None = None
    username: str | None = None


Step = Challenge | NeedCredentials | NeedDerivation | Verified | Failed


def decode_payload(text: str | None) -> bytes | None:
    """The bytes of a SASL element's base64 text (RFC 6120 §6.4.2); '=' is empty.

    Raises ValueError for bad base64 (the caller answers `incorrect-encoding`).
    """
    if text is None or not text.strip():
        return None
    text = "".join(text.split())
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from exc


def encode_payload(data: bytes | None) -> str | None:
    if data is None:
        return None
    return base64.b64encode(data).decode("ascii") if data else "="


def _saslname(value: str) -> str:
    """RFC 5802 §5.1 saslname: '=2C' is ',' and '=3D' is '='; any other '=' is invalid."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "=":
            code = value[i + 1 : i + 3]
            if code not in ("2C", "3D"):
                raise ValueError("bad '=' escape in saslname")
            out.append("," if code == "2C" else "=")
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def base_mechanism(mechanism: str) -> str:
    """The mechanism whose stored keys `mechanism` uses (SCRAM-SHA-256-PLUS -> SCRAM-SHA-256)."""
    return mechanism.removesuffix(PLUS_SUFFIX)


@dataclass(frozen=True)
class Gs2Header:
    """RFC 5802 §7 gs2-header: `flag` is "n", "y" or "p" (then `cb_type` is set); `raw` as sent."""

    flag: str
    cb_type: str | None
    raw: str


def gs2_header(client_first: str) -> Gs2Header:
    """The gs2 header of a SCRAM client-first message; ValueError if malformed."""
    flag, sep1, rest = client_first.partition(",")
    authzid, sep2, _bare = rest.partition(",")
    if not (sep1 and sep2):
        raise ValueError("malformed gs2 header")
    raw = f"{flag},{authzid},"
    if flag in ("n", "y"):
        return Gs2Header(flag, None, raw)
    cb_type = flag[2:] if flag.startswith("p=") else ""
    if not cb_type or not all(c.isascii() and (c.isalnum() or c in ".-") for c in cb_type):
        raise ValueError("gs2 flag must be n, y or p=<channel binding type>")
    return Gs2Header("p", cb_type, raw)


def binding_refusal(mechanism: str, header: Gs2Header, offered: tuple[str, ...]) -> str | None:
    """Why the gs2 header is refused for `mechanism` when the -PLUS mechanisms were
    offered with channel-binding types `offered` (empty: not offered); None if fine."""
    if mechanism.endswith(PLUS_SUFFIX):
        if header.flag != "p":
            return f"{mechanism} requires channel binding (gs2 flag p=)"
        if header.cb_type not in offered:
            return f"channel binding type {header.cb_type} is not offered (offered: {', '.join(offered)})"
        return None
    if header.flag == "p":
        return f"channel binding requires {mechanism}{PLUS_SUFFIX}"
    if header.flag == "y" and offered:
        return "gs2 flag y, but channel binding was offered (downgrade?)"
    return None


def scram_username(client_first: str) -> tuple[str, str | None]:
    """`(username, authzid)` of a SCRAM client-first message; ValueError if malformed."""
    parts = client_first.split(",")
    if len(parts) < 4 or not (parts[0] in ("n", "y") or parts[0].startswith("p=")):
        raise ValueError("malformed client-first message")
    authzid = None
    if parts[1]:
        if not parts[1].startswith("a="):
            raise ValueError("malformed authzid")
        authzid = _saslname(parts[1][2:])
    if not parts[2].startswith("n="):
        raise ValueError("missing username")
    return _saslname(parts[2][2:]), authzid


def dummy_keys(secret: bytes, username: str, mechanism: str) -> _Keys:
    """Keys no password matches, stable per username (hides which users exist)."""
    hf = _HASHES[mechanism]
    seed = hmac.new(secret, f"{mechanism}:{username}".encode(), hashlib.sha256).digest()
    return _Keys(seed[:16], 4096, hf(seed + b"s").digest(), hf(seed + b"k").digest())


@dataclass(frozen=True)
class _Keys:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    """SaltedPassword of SCRAM-SHA-256 (RFC 5802 §3): the CPU-heavy step of PLAIN."""
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


def _prepared(password: str) -> bytes | None:
    """RFC 8265 §4.2 OpaqueString, then SASLprep as at provisioning; None if refused."""
    try:
        opaque: str = password if password.isascii() and password.isprintable() else OPAQUE.enforce(password)
        prepared: str = saslprep(opaque)
    except (ScramException, UnicodeError):
        return None
    return prepared.encode("utf-8")


def salted_matches(salted: bytes, keys: StoredKeys) -> bool:
    """Does SaltedPassword `salted` give `keys`' StoredKey (SCRAM-SHA-256)?"""
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key)


def plain_matches(password: str, keys: StoredKeys) -> bool:
    """Does `password` derive `keys` (SCRAM-SHA-256: SaltedPassword -> StoredKey)?"""
    prepared = _prepared(password)
    return prepared is not None and salted_matches(salted_password(prepared, keys.salt, keys.iterations), keys)


class SaslExchange:
    """One `<auth/>` attempt with one mechanism."""

    def __init__(self, mechanism: str, *, domain: str, nonce: str, secret: bytes,
                 binding: ChannelBinding | None = None) -> None:
        """`binding`: the connection's channel bindings when -PLUS was offered, else None."""
        if mechanism not in SCRAM_MECHANISMS and mechanism != PLAIN and not (
                mechanism in SCRAM_PLUS_MECHANISMS and binding is not None):
            raise ValueError(f"unsupported mechanism {mechanism}")
        self.mechanism = mechanism
        self._binding = binding
        self._offered = binding.types() if binding is not None else ()
        self._cbind_input = b""  # -PLUS: gs2 header + channel-binding data, what c= must carry
        self._domain = domain
        self._nonce = nonce
        self._secret = secret
        self._username: str | None = None
        self._known_user = False
        self._payload = b""  # client-first (SCRAM) or the PLAIN message
        self._server: _ScramServer | None = None
        self._keys: StoredKeys | None = None  # PLAIN: the keys the derivation is checked against
        self._stage = _Stage.START

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            self._stage = _Stage.AWAIT_FIRST
            return Challenge(b"")  # RFC 6120 §6.4.2: empty challenge, client sends data
        return self._first(initial)

    def respond(self, data: bytes | None) -> Step:
        if self._stage == _Stage.AWAIT_FIRST:
            return self._first(data or b"")
        if self._stage == _Stage.CHALLENGED:
            return self._final(data or b"")
        return Failed(SaslCondition.MALFORMED_REQUEST, "unexpected response")

    def _first(self, data: bytes) -> Step:
        authzid: str | None
        try:
            text = data.decode("utf-8")
            if self.mechanism == PLAIN:
                authzid, username = self._parse_plain(text)
            else:
                username, authzid = scram_username(text)
                header = gs2_header(text)
        except (UnicodeDecodeError, ValueError) as exc:
            return Failed(SaslCondition.MALFORMED_REQUEST, str(exc))
        if self.mechanism != PLAIN and (refusal := self._bind(header)) is not None:
            self._stage = _Stage.DONE
            return Failed(SaslCondition.NOT_AUTHORIZED, refusal, username)
        # PRECIS refuses it: no such user; kept unprepared (folding it could name one: U+017F)
        with contextlib.suppress(InvalidJid):
            username = prep_localpart(username)
        if authzid and authzid not in (username, f"{username}@{self._domain}"):
            return Failed(SaslCondition.INVALID_AUTHZID, "authzid must be your own JID", username)
        self._username, self._payload, self._stage = username, data, _Stage.AWAIT_KEYS
        keys_of = PLAIN_KEYS_MECHANISM if self.mechanism == PLAIN else base_mechanism(self.mechanism)
        return NeedCredentials(username, keys_of)

    def _bind(self, header: Gs2Header) -> str | None:
        """Check the gs2 header against what was offered; -PLUS: keep the cbind input."""
        refusal = binding_refusal(self.mechanism, header, self._offered)
        if refusal is None and header.cb_type is not None:
            assert self._binding is not None
            data = self._binding.data(header.cb_type)
            if not data:
                return f"no {header.cb_type} channel binding data on this connection"
            self._cbind_input = header.raw.encode("utf-8") + data
        return refusal

    @staticmethod
    def _parse_plain(text: str) -> tuple[str, str]:
        parts = text.split("\x00")
        if len(parts) != 3 or not parts[1]:
            raise ValueError("PLAIN message must be authzid NUL authcid NUL password")
        return parts[0], parts[1]

    def credentials(self, keys: StoredKeys | None) -> Step:
        """The stored keys of the user named in `NeedCredentials` (None: no such user)."""
        assert self._stage == _Stage.AWAIT_KEYS and self._username is not None
        self._known_user = keys is not None
        if self.mechanism == PLAIN:
            prepared = _prepared(self._payload.decode("utf-8").split("\x00")[2])
            if prepared is None:
                self._stage = _Stage.DONE
                return Failed(SaslCondition.NOT_AUTHORIZED, None, self._username)
            if keys is None:  # derive anyway: an unknown name costs what a wrong password does
                keys = dummy_keys(self._secret, self._username, PLAIN_KEYS_MECHANISM)
            self._keys, self._stage = keys, _Stage.AWAIT_DERIVATION
            return NeedDerivation(prepared, keys.salt, keys.iterations)
        base = base_mechanism(self.mechanism)
        use = keys if keys is not None else dummy_keys(self._secret, self._username, base)
        return self._scram_first(use)

    def derived(self, salted: bytes) -> Step:
        """PLAIN: the SaltedPassword the host derived for `NeedDerivation`."""
        assert self._stage == _Stage.AWAIT_DERIVATION and self._keys is not None and self._username is not None
        self._stage = _Stage.DONE
        if salted_matches(salted, self._keys) and self._known_user:
            return Verified(self._username, None)
        return Failed(SaslCondition.NOT_AUTHORIZED, None, self._username)

    def _scram_first(self, keys: StoredKeys) -> Step:
        def auth_fn(_username: str) -> tuple[bytes, bytes, bytes, int]:
            return keys.salt, keys.stored_key, keys.server_key, keys.iterations

        server: _ScramServer
        if self.mechanism in SCRAM_PLUS_MECHANISMS:
            server = _PlusServer(_HASHES[base_mechanism(self.mechanism)], keys, self._nonce, self._cbind_input)
        else:
            server = ScramMechanism(self.mechanism).make_server(auth_fn, s_nonce=self._nonce)
        self._server = server
        try:
            server.set_client_first(self._payload.decode("utf-8"))
            server_first = server.get_server_first()
        except ScramException as exc:
            self._stage = _Stage.DONE
            return Failed(SaslCondition.MALFORMED_REQUEST, str(exc), self._username)
        self._stage = _Stage.CHALLENGED
        return Challenge(server_first.encode("utf-8"))

    def _final(self, data: bytes) -> Step:
        self._stage = _Stage.DONE
        assert self._server is not None and self._username is not None
        try:
            text = data.decode("utf-8")
            if (bad := non_canonical_base64(text)) is not None:
                return Failed(SaslCondition.MALFORMED_REQUEST, f"{bad}= is not canonical base64", self._username)
            self._server.set_client_final(text)
            server_final = self._server.get_server_final()
        except UnicodeDecodeError:
            return Failed(SaslCondition.MALFORMED_REQUEST, "not UTF-8", self._username)
        except ScramException as exc:
            if exc.server_error is ServerError.CHANNEL_BINDINGS_DONT_MATCH:
                return Failed(SaslCondition.NOT_AUTHORIZED, "channel binding data do not match", self._username)
            if exc.server_error is ServerError.INVALID_PROOF or not self._known_user:
                return Failed(SaslCondition.NOT_AUTHORIZED, None, self._username)
            return Failed(SaslCondition.MALFORMED_REQUEST, str(exc), self._username)
        if not self._known_user:
            return Failed(SaslCondition.NOT_AUTHORIZED, None, self._username)
        return Verified(self._username, server_final.encode("utf-8"))


def non_canonical_base64(client_final: str) -> str | None:
    """The name of a base64 attribute of a client-final message (`c`, `p`) that is not in
    canonical form (RFC 4648 §3.5: padding bits set, or no padding), else None: such a
    proof decodes to the right bytes though its text differs from what the client
    computed, and a decoder that takes it accepts a message that was changed."""
    for part in client_final.split(","):
        key, sep, value = part.partition("=")
        if sep and key in ("c", "p"):
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return key
            if base64.b64encode(decoded).decode("ascii") != value:
                return key
    return None


class _PlusServer:
    """The server side of SCRAM-*-PLUS (RFC 5802 §3, §5.1, §7) on stored keys, with the
    `c=` attribute checked against `cbind_input` (gs2 header + channel-binding data).
    Faults raise `ScramException` with scramp's `ServerError`s, as scramp's server does."""

    def __init__(self, hash_factory: Callable[..., Any], keys: StoredKeys, s_nonce: str, cbind_input: bytes) -> None:
        self._hash, self._keys, self._s_nonce, self._cbind_input = hash_factory, keys, s_nonce, cbind_input
        self._bare = self._server_first = self._nonce = ""
        self._signature = b""

    @staticmethod
    def _attributes(message: str, *required: str) -> dict[str, str]:
        attrs: dict[str, str] = {}
        for part in message.split(","):
            key, sep, value = part.partition("=")
            if not sep or len(key) != 1 or key in attrs:
                raise ScramException(f"malformed attribute {part!r}", ServerError.OTHER_ERROR)
            attrs[key] = value
        if "m" in attrs or any(name not in attrs for name in required):
            raise ScramException(f"expected attributes {', '.join(required)}", ServerError.OTHER_ERROR)
        return attrs

    def set_client_first(self, client_first: str) -> None:
        self._bare = client_first.split(",", 2)[2]
        c_nonce = self._attributes(self._bare, "n", "r")["r"]
        if not c_nonce or not all(c.isprintable() and c != "," for c in c_nonce):
            raise ScramException("bad client nonce", ServerError.OTHER_ERROR)
        self._nonce = c_nonce + self._s_nonce

    def get_server_first(self) -> str:
        salt = base64.b64encode(self._keys.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={self._keys.iterations}"
        return self._server_first

    def set_client_final(self, client_final: str) -> None:
        without_proof, sep, proof_b64 = client_final.rpartition(",p=")
        attrs = self._attributes(without_proof, "c", "r") if sep else {}
        try:
            cbind = base64.b64decode(attrs.get("c", ""), validate=True)
            proof = base64.b64decode(proof_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ScramException("bad base64", ServerError.INVALID_ENCODING) from exc
        if not sep:
            raise ScramException("missing proof", ServerError.OTHER_ERROR)
        if not hmac.compare_digest(cbind, self._cbind_input):
            raise ScramException("channel bindings do not match", ServerError.CHANNEL_BINDINGS_DONT_MATCH)
        if attrs["r"] != self._nonce:
            raise ScramException("nonce does not match", ServerError.OTHER_ERROR)
        auth_message = f"{self._bare},{self._server_first},{without_proof}".encode()
        signature = hmac.new(self._keys.stored_key, auth_message, self._hash).digest()
        if len(proof) != len(signature):
            raise ScramException("bad proof length", ServerError.INVALID_PROOF)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(self._hash(client_key).digest(), self._keys.stored_key):
            raise ScramException("invalid proof", ServerError.INVALID_PROOF)
        self._signature = hmac.new(self._keys.server_key, auth_message, self._hash).digest()

    def get_server_final(self) -> str:
        return "v=" + base64.b64encode(self._signature).decode("ascii")
