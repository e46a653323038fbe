"""The link's MACs, pure.

Rules of this module:
- `mac(key, *parts)` is HMAC-SHA256 (RFC 2104), for the few MACs of a handshake
  (proofs, key derivation).
- `FrameTag(key)` makes the per-frame tags: keyed BLAKE2b (RFC 7693 §2.9: its keyed
  mode is a MAC, a PRF under the key) with a 16-byte digest. The key block is hashed
  once and each frame costs one copy of that state. Why not HMAC-SHA256: it costs two
  hash states per frame, and was 0.71 us against 0.47 us per 170-byte frame here,
  twice per cross-node message (sealed once, checked once).
"""

from __future__ import annotations

import hashlib
import hmac

TAG_LEN = 16  # bytes of tag on each frame after the handshake


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.digest(key, b"".join(parts), "sha256")


class FrameTag:
    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if not 1 <= len(key) <= hashlib.blake2b.MAX_KEY_SIZE:
            raise ValueError(f"a frame key must be 1-{hashlib.blake2b.MAX_KEY_SIZE} bytes")
        self._keyed = hashlib.blake2b(key=key, digest_size=TAG_LEN)

    def tag(self, counter: int, body: bytes | memoryview, more: bytes = b"") -> bytes:
        """The tag of frame number `counter` whose body is `body + more` (fixed arity:
        a loop over parts cost a third more)."""
        h = self._keyed.copy()
        h.update(counter.to_bytes(8, "big"))
        h.update(body)
        if more:
            h.update(more)
        return h.digest()
