"""Wire format of the node-to-node link (pure: no I/O, no state beyond a byte buffer).

Rules of this module:
- Every frame is `u32 length | body` (big-endian); `length` counts the body only. A
  length over the configured maximum is a `FrameError` as soon as the 4-byte header is
  in, so an oversized body is never buffered.
- `body[0]` is a `FrameType`. Layouts are the `struct` formats below plus, where
  noted, a trailing UTF-8 node name (u8 length) and a trailing 32-byte HMAC proof.
- Decoders raise only `FrameError`; the core turns it into `ProtocolFailed`.
- Sealing (the per-frame authentication tag) is the core's job, not this module's.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

PROTOCOL_VERSION = 2  # 2: frame tags are keyed BLAKE2b (1: HMAC-SHA256)
NONCE_LEN = 16
SESSION_ID_LEN = 16
PROOF_LEN = 32
MAX_NAME_BYTES = 255

_LENGTH = struct.Struct(">I")
_LENGTH_SIZE = _LENGTH.size
_HELLO = struct.Struct(">BB16s16sQ")  # type, version, nonce, session id, first unacked
_CHALLENGE = struct.Struct(">BB16s16sQQ")  # ... as HELLO, then recv seq
_AUTH = struct.Struct(">BQ")  # type, recv seq; then proof
_DATA = struct.Struct(">BQQB")  # type, seq, cumulative ack, kind; then payload
_ACK = struct.Struct(">BQ")  # type, cumulative ack

DATA_HEADER_LEN = _DATA.size


class FrameType(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    DATA = 4
    ACK = 5
    ERROR = 6


class Kind(enum.IntEnum):
    """What a data frame carries. HEARTBEAT is unsequenced and never retransmitted."""

    STANZA = 1
    CONTROL = 2
    HEARTBEAT = 3


_DATA_TYPE = int(FrameType.DATA)


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame."""


@dataclass(frozen=True, slots=True)
class Hello:
    nonce: bytes
    session_id: bytes
    first_unacked: int
    name: str
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    session_id: bytes
    first_unacked: int
    recv_seq: int
    name: str
    proof: bytes
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Auth:
    recv_seq: int
    proof: bytes


@dataclass(slots=True)  # not frozen: made per frame, and a frozen __init__ costs 3x
class Data:
    seq: int
    ack: int
    kind: Kind
    payload: bytes


def frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Split a byte stream into frames, refusing any frame over `max_size`.

    The buffer is the bytes read, kept as they came (`buffer`): a frame is found as a
    span of it (`next_span`), so the core can check a frame's tag and take its payload
    with one copy. A partial frame left at the end of a read is joined to the next
    read (one copy of at most one read and one frame)."""

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self.buffer = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        rest = self.buffer
        self.buffer = rest[self._pos :] + data if self._pos < len(rest) else bytes(data)
        self._pos = 0

    def next_span(self) -> tuple[int, int] | None:
        """(start, end) of the next complete body in `buffer`, or None when more bytes
        are needed."""
        pos, buf = self._pos, self.buffer
        if len(buf) - pos < _LENGTH_SIZE:
            return None
        (size,) = _LENGTH.unpack_from(buf, pos)
        if size > self._max:
            raise FrameError(f"frame of {size} bytes exceeds the maximum of {self._max}")
        if size == 0:
            raise FrameError("empty frame")
        end = pos + _LENGTH_SIZE + size
        if len(buf) < end:
            return None
        self._pos = end
        return pos + _LENGTH_SIZE, end

    def next_body(self) -> bytes | None:
        """The next complete body, or None when more bytes are needed."""
        span = self.next_span()
        return None if span is None else self.buffer[span[0] : span[1]]


def name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NAME_BYTES:
        raise ValueError(f"node name must be 1-{MAX_NAME_BYTES} UTF-8 bytes: {name!r}")
    return bytes([len(raw)]) + raw


def _read_name(body: bytes, offset: int, trailer: int) -> str:
    """The u8-prefixed name at `offset`, which must end exactly `trailer` bytes early."""
    if len(body) <= offset:
        raise FrameError("truncated node name")
    size = body[offset]
    if size == 0 or offset + 1 + size + trailer != len(body):
        raise FrameError("bad node name length")
    try:
        return body[offset + 1 : offset + 1 + size].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("node name is not UTF-8") from exc


_SEQ_LIMIT = 1 << 62
_KINDS = {k.value: k for k in Kind}  # dict lookup: Enum() is slow on the per-frame path


def _check_seq(*values: int) -> None:
    if any(v < 0 or v >= _SEQ_LIMIT for v in values):
        raise FrameError("sequence number out of range")


def encode_hello(h: Hello) -> bytes:
    head = _HELLO.pack(FrameType.HELLO, h.version, h.nonce, h.session_id, h.first_unacked)
    return head + name_bytes(h.name)


def decode_hello(body: bytes) -> Hello:
    if len(body) < _HELLO.size:
        raise FrameError("truncated HELLO")
    _, version, nonce, session_id, first_unacked = _HELLO.unpack_from(body)
    name = _read_name(body, _HELLO.size, 0)
    if first_unacked < 1:
        raise FrameError("HELLO first unacked sequence must be >= 1")
    _check_seq(first_unacked)
    return Hello(nonce, session_id, first_unacked, name, version)


def encode_challenge_unproven(c: Challenge) -> bytes:
    """The CHALLENGE body without its trailing proof (the part the proof covers)."""
    head = _CHALLENGE.pack(
        FrameType.CHALLENGE, c.version, c.nonce, c.session_id, c.first_unacked, c.recv_seq
    )
    return head + name_bytes(c.name)


def decode_challenge(body: bytes) -> Challenge:
    if len(body) < _CHALLENGE.size + PROOF_LEN:
        raise FrameError("truncated CHALLENGE")
    _, version, nonce, session_id, first_unacked, recv_seq = _CHALLENGE.unpack_from(body)
    name = _read_name(body, _CHALLENGE.size, PROOF_LEN)
    if first_unacked < 1:
        raise FrameError("CHALLENGE first unacked sequence must be >= 1")
    _check_seq(first_unacked, recv_seq)
    proof = body[-PROOF_LEN:]
    return Challenge(nonce, session_id, first_unacked, recv_seq, name, proof, version)


def encode_auth_unproven(recv_seq: int) -> bytes:
    return _AUTH.pack(FrameType.AUTH, recv_seq)


def decode_auth(body: bytes) -> Auth:
    if len(body) != _AUTH.size + PROOF_LEN:
        raise FrameError("bad AUTH length")
    _, recv_seq = _AUTH.unpack_from(body)
    _check_seq(recv_seq)
    return Auth(recv_seq, body[_AUTH.size :])


def encode_data(seq: int, ack: int, kind: Kind, payload: bytes) -> bytes:
    return _DATA.pack(FrameType.DATA, seq, ack, kind) + payload


def data_frame(seq: int, ack: int, kind: int, payload: bytes, seal: Callable[[bytes, bytes], bytes]) -> bytes:
    """The framed DATA body `encode_data(...) + seal(header, payload)` (the tag), with
    one copy of the payload."""
    head = _DATA.pack(_DATA_TYPE, seq, ack, kind)
    tag = seal(head, payload)
    return b"".join((_LENGTH.pack(_DATA.size + len(payload) + len(tag)), head, payload, tag))


def decode_data(body: bytes) -> Data:
    seq, ack, kind = decode_data_header(body, 0, len(body))
    return Data(seq, ack, kind, body[_DATA.size :])


def decode_data_header(buf: bytes, start: int, end: int) -> tuple[int, int, Kind]:
    """(seq, ack, kind) of the DATA body at buf[start:end]; its payload follows the header."""
    if end - start < _DATA.size:
        raise FrameError("truncated DATA")
    _, seq, ack, raw_kind = _DATA.unpack_from(buf, start)
    kind = _KINDS.get(raw_kind)
    if kind is None:
        raise FrameError(f"unknown frame kind {raw_kind}")
    if seq >= _SEQ_LIMIT or ack >= _SEQ_LIMIT:
        raise FrameError("sequence number out of range")
    return seq, ack, kind


def encode_ack(ack: int) -> bytes:
    return _ACK.pack(FrameType.ACK, ack)


def decode_ack(body: bytes) -> int:
    if len(body) != _ACK.size:
        raise FrameError("bad ACK length")
    ack: int
    _, ack = _ACK.unpack(body)
    _check_seq(ack)
    return ack


def encode_error(reason: str) -> bytes:
    return bytes([FrameType.ERROR]) + reason.encode("utf-8")[:512]


def decode_error(body: bytes) -> str:
    return body[1:].decode("utf-8", errors="replace")
