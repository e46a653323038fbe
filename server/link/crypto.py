"""HMAC-SHA256 (RFC 2104) for the link, pure.

Rules of this module:
- `mac(key, *parts)` for the few MACs of a handshake (proofs, key derivation).
- `FrameMac(key)` for per-frame tags: it hashes the padded key once, so each frame
  costs two hash-state copies. Why: OpenSSL 3's one-shot HMAC spends more on setup than
  on hashing a 1 KB frame (measured 8.5 us vs 4.5 us per tag here). Its output is
  exactly `hmac.digest(key, b"".join(parts), "sha256")` (tested).
"""

from __future__ import annotations

import hashlib
import hmac

_BLOCK = 64  # SHA-256 block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.digest(key, b"".join(parts), "sha256")


class FrameMac:
    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, *parts: bytes) -> bytes:
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
