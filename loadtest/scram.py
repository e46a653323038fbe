"""SCRAM client messages (RFC 5802, RFC 7677) from a cached SaltedPassword.

Rules of this module:
- Pure: no I/O, no clock; the nonce is the caller's.
- Why not scramp's client: scramp derives SaltedPassword (PBKDF2, 4096 rounds) on
  every authentication and takes no cached value. RFC 5802 §5.1 lets a client cache it
  ("as it is likely that the server is going to advertise the same salt value upon
  reauthentication"), as mobile clients do. The load generator simulates a thousand
  clients on one core: measured here, one PBKDF2-SHA-256 costs 8-11 ms, so 500 clients
  resuming at once would queue 4-5 s of PBKDF2 in the generator, time no real client
  (each on its own CPU, most with a cache) spends. `SaltedPasswords` keeps one per
  (password, salt, iterations); the messages are RFC 5802 §3's formulas, checked in the
  unit tests against scramp's server.
- No channel binding by default (gs2 header `n,,`), as the lean client negotiates
  none; with `cb_type` and `cb_data` it runs SCRAM-*-PLUS (RFC 5802 §6, RFC 9266:
  gs2 header `p=<cb_type>,,`, `c=` carrying the header and the data); `gs2_flag`
  sends another flag (`y`) to test the server's downgrade rule.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256",
          "SCRAM-SHA-1-PLUS": "sha1", "SCRAM-SHA-256-PLUS": "sha256"}
GS2_HEADER = "n,,"


class ScramError(Exception):
    """The server's SCRAM message is malformed, or its signature is wrong."""


def _saslname(username: str) -> str:
    return username.replace("=", "=3D").replace(",", "=2C")


def _attributes(message: str) -> dict[str, str]:
    out = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out[key] = value
    return out


@dataclass
class SaltedPasswords:
    """SaltedPassword per (hash, password, salt, iterations): one PBKDF2 per account."""

    cache: dict[tuple[str, str, bytes, int], bytes] = field(default_factory=dict)

    def get(self, hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
        key = (hash_name, password, salt, iterations)
        if key not in self.cache:
            self.cache[key] = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
        return self.cache[key]


@dataclass
class ScramExchange:
    """One authentication: `first()`, `final(server_first)`, `check(server_final)`."""

    mechanism: str
    username: str
    password: str
    nonce: str
    salted: SaltedPasswords
    cb_type: str | None = None  # channel binding (-PLUS): its type...
    cb_data: bytes = b""  # ...and its data (RFC 9266: the TLS exporter's 32 bytes)
    gs2_flag: str | None = None  # the gs2 flag when not n/p=cb_type (tests: "y")
    _bare: str = ""
    _server_signature: bytes = b""

    def first(self) -> str:
        self._bare = f"n={_saslname(self.username)},r={self.nonce}"
        return self.gs2_header() + self._bare

    def gs2_header(self) -> str:
        if self.gs2_flag is not None:
            return f"{self.gs2_flag},,"
        return f"p={self.cb_type},," if self.cb_type else GS2_HEADER

    def final(self, server_first: str) -> str:
        attrs = _attributes(server_first)
        if not attrs.get("r", "").startswith(self.nonce) or "s" not in attrs or "i" not in attrs:
            raise ScramError(f"bad server-first-message {server_first!r}")
        hash_name = HASHES[self.mechanism]
        salted = self.salted.get(hash_name, self.password, base64.b64decode(attrs["s"]), int(attrs["i"]))
        cbind_input = self.gs2_header().encode() + (self.cb_data if self.cb_type else b"")
        without_proof = f"c={base64.b64encode(cbind_input).decode()},r={attrs['r']}"
        auth_message = f"{self._bare},{server_first},{without_proof}".encode()
        client_key = hmac.digest(salted, b"Client Key", hash_name)
        signature = hmac.digest(hashlib.new(hash_name, client_key).digest(), auth_message, hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = hmac.digest(hmac.digest(salted, b"Server Key", hash_name), auth_message, hash_name)
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def check(self, server_final: str) -> None:
        verifier = _attributes(server_final).get("v")
        if verifier is None or not hmac.compare_digest(base64.b64decode(verifier), self._server_signature):
            raise ScramError(f"bad server signature in {server_final!r}")
