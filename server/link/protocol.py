"""Sans-IO core of the authenticated, reliable node-to-node link.

Rules of this module:
- No I/O, clock or randomness: nonces come in as arguments; bytes and events go out
  (`receive_data`, `events`, `data_to_send`, `send(msg) -> bytes`). A peer's fault is
  an output (`ProtocolFailed` plus an ERROR frame to the peer), never an exception;
  local misuse raises `LocalProtocolError`.
- `PeerLinks` holds one `PeerLink` per peer: what must survive reconnects (sequence
  numbers, the unacked buffer, what we received from which peer session). A
  `LinkConnection` lives as long as one transport connection.
- Handshake (I = initiator, R = responder, K = cluster secret, never sent):
      I -> R  HELLO      version nonce_i session_i first_unacked_i name_i
      R -> I  CHALLENGE  version nonce_r session_r first_unacked_r recv_r name_r
                         proof_r = HMAC(K, "responder" | HELLO | CHALLENGE w/o proof)
      I -> R  AUTH       recv_i, proof_i = HMAC(K, "initiator" | HELLO | CHALLENGE |
                         AUTH w/o proof)
  Both nonces are fresh, so a replayed or spliced handshake fails a proof. Per-direction
  keys are derived from K and the whole transcript; after the handshake every frame but
  ERROR carries a 16-byte keyed-BLAKE2b tag over (counter | body) (crypto.py), so
  injected, altered, replayed or reordered frames end the link.
- Resume: `recv_x` is how far x has delivered the other side's stream. A receiver that
  does not know the sender's session id (first contact, or the sender restarted)
  adopts it and expects `first_unacked` next; otherwise it continues and drops
  duplicates. The sender forgets frames up to `recv_x` and retransmits the rest in
  order, so delivery is exactly-once and in order per pair of sessions. Across a peer
  restart the unacked frames are retransmitted to the new process (at-least-once
  across processes; `HandshakeComplete.restarted` tells the upper layer).
- A side commits the handshake only after verifying the peer's proof, and only if its
  `PeerLink` did not change meanwhile. The newest committed connection owns the
  `PeerLink`; an older one fails with "superseded" when it is next used.
- Sealed frames must hit the wire in sealing order: `send` returns any output pending
  from `receive_data` first (a reply written from a frame callback cannot overtake it).
- Acks are cumulative and batched: every DATA frame carries one; a standalone ACK goes
  out as soon as `LinkConfig.ack_every` received messages are owed one, otherwise
  `receive_data` reports `AckOwed` and the adapter sends `DelayedAck` after a short,
  fixed delay. So an ack is never later than that delay (the sender's window frees on
  acks), and a busy link sends one ACK per `ack_every` messages, not one per read.
"""

from __future__ import annotations

import enum
import hmac
import itertools
from dataclasses import dataclass

from presence_ha.server.link import frames as f
from presence_ha.server.link.crypto import TAG_LEN, FrameTag
from presence_ha.server.link.crypto import mac as _mac
from presence_ha.server.link.frames import FrameError, FrameType, Kind
from presence_ha.server.link.state import LocalProtocolError, PeerLink, PeerLinks

_LABEL = b"presence-ha/link/1 "


# Messages this side sends (`LinkConnection.send`). Those made per message are not
# frozen: a frozen dataclass's __init__ costs three times as much (374 vs 124 ns).
@dataclass(slots=True)
class Message:
    kind: Kind
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A standalone cumulative ack; the adapter sends one per heartbeat interval."""


@dataclass(frozen=True, slots=True)
class DelayedAck:
    """The cumulative ack, if received messages are still owed one (nothing otherwise);
    the adapter sends it when the delay it started on `AckOwed` is over."""


# Events out (`LinkConnection.events`).
@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    peer_name: str
    peer_session_id: bytes
    restarted: bool  # we knew an older session of this peer: its process restarted


@dataclass(slots=True)
class FrameReceived:
    kind: Kind
    payload: bytes
    seq: int = 0  # 0 for HEARTBEAT (unsequenced); hold it with PeerLink.hold to delay its ack


@dataclass(slots=True)
class AckReceived:
    seq: int  # every message up to seq is delivered; buffer space is free again


@dataclass(frozen=True, slots=True)
class AckOwed:
    """Received messages are owed an ack that was not sent yet: send `DelayedAck` soon."""


@dataclass(frozen=True, slots=True)
class ProtocolFailed:
    reason: str


Event = HandshakeComplete | FrameReceived | AckReceived | AckOwed | ProtocolFailed
_ACK_OWED = AckOwed()


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class ConnState(enum.Enum):
    AWAITING_HELLO = "awaiting hello"
    AWAITING_CHALLENGE = "awaiting challenge"
    AWAITING_AUTH = "awaiting auth"
    ESTABLISHED = "established"
    FAILED = "failed"


_FRAME_TYPES = {t.value: t for t in FrameType}  # dict lookup: Enum() is slow per frame
_DATA = int(FrameType.DATA)
_DATA_HEADER = f.DATA_HEADER_LEN
# Frame types each state accepts; anything else is a protocol error.
_ACCEPTS: dict[ConnState, frozenset[FrameType]] = {
    ConnState.AWAITING_HELLO: frozenset({FrameType.HELLO, FrameType.ERROR}),
    ConnState.AWAITING_CHALLENGE: frozenset({FrameType.CHALLENGE, FrameType.ERROR}),
    ConnState.AWAITING_AUTH: frozenset({FrameType.AUTH, FrameType.ERROR}),
    ConnState.ESTABLISHED: frozenset({FrameType.DATA, FrameType.ACK, FrameType.ERROR}),
    ConnState.FAILED: frozenset(),
}


class _Refused(Exception):
    """Internal: the handshake must fail with this reason."""


class LinkConnection:
    """One transport connection of the link, from handshake to failure."""

    def __init__(
        self, role: Role, links: PeerLinks, nonce: bytes, expected_peer: str | None = None
    ) -> None:
        if len(nonce) != f.NONCE_LEN:
            raise LocalProtocolError(f"nonce must be {f.NONCE_LEN} fresh random bytes")
        if role is Role.INITIATOR and expected_peer is None:
            raise LocalProtocolError("an initiator must name the peer it dials")
        self._role, self._links, self._cfg = role, links, links.config
        self._nonce, self._expected = nonce, expected_peer
        self._reader = f.FrameReader(self._cfg.max_frame_size)
        self._events: list[Event] = []
        self._out = bytearray()
        self._peer: PeerLink | None = None
        self._epoch = -1
        self._snapshot: tuple[bytes | None, int] = (None, 0)
        self._peer_hello: f.Hello | None = None
        self._restarted, self._their_recv = False, 0  # set by _commit for _establish
        self._hello = self._challenge = b""
        self._send_tag = self._recv_tag = FrameTag(b"\0")  # replaced by the handshake's keys
        self._send_ctr = self._recv_ctr = 0
        self._owed = 0  # messages received (or duplicates) since our last ack went out
        self._sent_upto = 0  # last sequence number sealed on this connection
        self._state = ConnState.AWAITING_HELLO
        if role is Role.INITIATOR and expected_peer is not None:  # checked above
            self._start_initiator(expected_peer)

    # -- readable state -------------------------------------------------------------
    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def peer_name(self) -> str | None:
        """The name the peer claimed (proven once the state is ESTABLISHED)."""
        return self._peer.name if self._peer else None

    # -- API ------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self._state is ConnState.FAILED:
            return
        reader = self._reader
        reader.feed(data)
        # the handlers called below may fail the connection: mypy keeps the narrowing above
        while self._state is not ConnState.FAILED:  # type: ignore[comparison-overlap]
            try:
                span = reader.next_span()
                if span is None:
                    break
                start, end = span
                buf = reader.buffer
                if buf[start] == _DATA and self._state is ConnState.ESTABLISHED:
                    self._on_data(buf, start, self._unsealed_end(buf, start, end))
                else:
                    self._handle(buf[start:end])
            except (FrameError, _Refused) as exc:
                self._fail(str(exc))
        if self._is_current():
            self._out += self._flush_new()
            if self._owed >= self._cfg.ack_every:
                self._out += self._seal_ack()
            elif self._owed:
                self._events.append(_ACK_OWED)

    def progressed(self) -> None:
        """A held message was released (`PeerLink.release`): an ack is owed; the adapter
        sends `DelayedAck` (as for `AckOwed`)."""
        self._owed = max(self._owed, 1)

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def send(self, msg: Message | Keepalive | DelayedAck) -> bytes:
        """Bytes to write now, including any output still pending from `receive_data`
        (sealed frames must reach the wire in the order they were sealed). Reliable
        messages are buffered in `PeerLinks` even when nothing is sent for them (link
        not up): they go out after the next handshake, or with the next output of the
        current connection. A HEARTBEAT, Keepalive or DelayedAck on a link not up is not
        sent."""
        data = self._encode(msg)
        return self.data_to_send() + data if self._out else data

    def send_message(self, kind: Kind, payload: bytes) -> bytes:
        """`send(Message(kind, payload))` for a reliable message, without the object."""
        if kind is Kind.HEARTBEAT:
            return self.send(Message(kind, payload))
        data = self._queue(kind, payload)
        return self.data_to_send() + data if self._out else data

    def _queue(self, kind: Kind, payload: bytes) -> bytes:
        """Buffer a reliable message; the bytes that send it now, if the link is up."""
        name = self._peer.name if self._peer else self._expected
        if name is None:
            raise LocalProtocolError("no peer yet: queue through PeerLinks.queue")
        self._links.queue(name, kind, payload)
        return self._flush_new() if self._is_current() else b""

    def _encode(self, msg: Message | Keepalive | DelayedAck) -> bytes:
        if isinstance(msg, Message) and msg.kind is not Kind.HEARTBEAT:
            return self._queue(msg.kind, msg.payload)
        if not self._is_current():
            return b""
        if isinstance(msg, Keepalive):
            return self._flush_new() + self._seal_ack()
        if isinstance(msg, DelayedAck):
            out = self._flush_new()  # data frames carry the ack
            return out + self._seal_ack() if self._owed else out
        if len(msg.payload) > self._cfg.max_payload:
            raise LocalProtocolError("heartbeat payload too large")
        peer = self._peer
        assert peer is not None  # _is_current
        return self._seal(f.encode_data(0, peer.ack_upto, msg.kind, msg.payload))

    # -- handshake --------------------------------------------------------------------
    def _start_initiator(self, peer_name: str) -> None:
        self._peer = self._links.ensure(peer_name)
        self._snapshot = (self._peer.peer_session_id, self._peer.first_unacked)
        hello = f.Hello(self._nonce, self._cfg.session_id, self._peer.first_unacked,
                        self._cfg.local_name)
        self._hello = f.encode_hello(hello)
        self._out += f.frame(self._hello)
        self._state = ConnState.AWAITING_CHALLENGE

    def _on_hello(self, body: bytes) -> None:
        hello = f.decode_hello(body)
        self._check_peer(hello.version, hello.name)
        peer = self._peer = self._links.get(hello.name)
        self._snapshot = (peer.peer_session_id, peer.first_unacked)
        recv = self._recv_after_adopt(hello.session_id, hello.first_unacked)
        unproven = f.encode_challenge_unproven(f.Challenge(
            self._nonce, self._cfg.session_id, peer.first_unacked, recv,
            self._cfg.local_name, b""))
        proof = _mac(self._cfg.secret, _LABEL, b"responder", body, unproven)
        self._hello, self._challenge = body, unproven + proof
        self._out += f.frame(self._challenge)
        self._state = ConnState.AWAITING_AUTH
        self._peer_hello = hello

    def _on_challenge(self, body: bytes) -> None:
        ch = f.decode_challenge(body)
        self._check_peer(ch.version, ch.name)
        expected = _mac(self._cfg.secret, _LABEL, b"responder", self._hello, body[: -f.PROOF_LEN])
        if not hmac.compare_digest(expected, ch.proof):
            raise _Refused("peer failed authentication (wrong cluster secret?)")
        self._challenge = body
        recv = self._recv_after_adopt(ch.session_id, ch.first_unacked)
        unproven = f.encode_auth_unproven(recv)
        proof = _mac(self._cfg.secret, _LABEL, b"initiator", self._hello, body, unproven)
        self._commit(ch.session_id, ch.first_unacked, ch.recv_seq)
        self._out += f.frame(unproven + proof)
        self._establish(unproven + proof, ch.session_id)

    def _on_auth(self, body: bytes) -> None:
        auth = f.decode_auth(body)
        expected = _mac(self._cfg.secret, _LABEL, b"initiator", self._hello, self._challenge,
                        body[: -f.PROOF_LEN])
        if not hmac.compare_digest(expected, auth.proof):
            raise _Refused("peer failed authentication (wrong cluster secret?)")
        hello = self._peer_hello
        assert hello is not None  # AUTH is accepted only after our answer to a HELLO
        self._commit(hello.session_id, hello.first_unacked, auth.recv_seq)
        self._establish(body, hello.session_id)

    def _check_peer(self, version: int, name: str) -> None:
        if version != f.PROTOCOL_VERSION:
            raise _Refused(f"unsupported link protocol version {version}")
        if name == self._cfg.local_name:
            raise _Refused(f"peer claims our own name {name!r}")
        if self._expected is not None and name != self._expected:
            raise _Refused(f"expected peer {self._expected!r}, got {name!r}")
        allowed = self._cfg.allowed_peers
        if allowed is not None and name not in allowed:
            raise _Refused(f"peer {name!r} is not an allowed cluster node")

    def _recv_after_adopt(self, peer_session: bytes, peer_first_unacked: int) -> int:
        peer = self._peer
        assert peer is not None  # named by our HELLO or theirs
        if peer.peer_session_id == peer_session:
            return peer.ack_upto  # the peer sends again what is not processed; duplicates are dropped
        return peer_first_unacked - 1

    def _commit(self, peer_session: bytes, peer_first_unacked: int, their_recv: int) -> None:
        """Adopt the peer's session and its report of our stream; checks come first."""
        assert self._peer is not None  # named by our HELLO or theirs
        peer = self._peer = self._links.get(self._peer.name)  # may be registered by now
        if (peer.peer_session_id, peer.first_unacked) != self._snapshot:
            raise _Refused("link state changed during the handshake; retry")
        if not peer.first_unacked - 1 <= their_recv <= peer.last_seq:
            raise _Refused(f"peer reports seq {their_recv} outside "
                           f"[{peer.first_unacked - 1}, {peer.last_seq}]")
        continuing = peer.peer_session_id == peer_session
        if continuing and peer_first_unacked > peer.recv_seq + 1:
            raise _Refused(f"peer dropped seq {peer.recv_seq + 1}..{peer_first_unacked - 1}")
        self._restarted = peer.peer_session_id is not None and not continuing
        if not continuing:
            peer.adopt(peer_session, peer_first_unacked - 1)
        self._links.register(peer)
        peer.epoch += 1
        self._epoch = peer.epoch
        self._their_recv = their_recv

    def _establish(self, auth_body: bytes, peer_session: bytes) -> None:
        key = _mac(self._cfg.secret, _LABEL, b"keys", self._hello, self._challenge, auth_body)
        i2r, r2i = _mac(key, b"i2r"), _mac(key, b"r2i")
        initiator = self._role is Role.INITIATOR
        send, recv = (i2r, r2i) if initiator else (r2i, i2r)
        self._send_tag, self._recv_tag = FrameTag(send), FrameTag(recv)
        self._state = ConnState.ESTABLISHED
        peer = self._peer
        assert peer is not None  # set by _commit
        self._events.append(HandshakeComplete(peer.name, peer_session, self._restarted))
        self._apply_ack(self._their_recv)
        self._sent_upto = peer.first_unacked - 1
        self._out += self._flush_new()  # retransmit every unacked message, in order

    # -- established --------------------------------------------------------------------
    def _on_data(self, buf: bytes, start: int, end: int) -> None:
        """The DATA body at buf[start:end], its tag checked and cut off."""
        seq, ack, kind = f.decode_data_header(buf, start, end)
        self._require_current()
        self._apply_ack(ack)
        peer = self._peer
        assert peer is not None  # DATA is accepted only once established
        if (seq == 0) != (kind is Kind.HEARTBEAT):
            raise FrameError("HEARTBEAT frames, and only they, have seq 0")
        if kind is Kind.HEARTBEAT:
            self._events.append(FrameReceived(kind, buf[start + _DATA_HEADER : end]))
        elif seq == peer.recv_seq + 1:
            peer.recv_seq = seq
            self._events.append(FrameReceived(kind, buf[start + _DATA_HEADER : end], seq))
            self._owed += 1
        elif seq > peer.recv_seq + 1:
            raise FrameError(f"sequence gap: got {seq}, expected {peer.recv_seq + 1}")
        else:
            self._owed += 1  # a retransmitted duplicate: drop, but re-ack

    def _on_ack(self, body: bytes) -> None:
        ack = f.decode_ack(body)
        self._require_current()
        self._apply_ack(ack)

    def _on_error(self, body: bytes) -> None:
        self._fail(f"peer reported: {f.decode_error(body)}", notify=False)

    def _apply_ack(self, ack: int) -> None:
        peer = self._peer
        assert peer is not None  # acks arrive once established
        if ack > peer.last_seq:
            raise FrameError(f"ack {ack} for a message never sent (last {peer.last_seq})")
        if peer.unacked and peer.unacked[0][0] <= ack:
            while peer.unacked and peer.unacked[0][0] <= ack:
                peer.unacked.popleft()
            self._events.append(AckReceived(ack))

    # -- plumbing -----------------------------------------------------------------------
    def _handle(self, body: bytes) -> None:
        ftype = _FRAME_TYPES.get(body[0])
        if ftype is None:
            raise FrameError(f"unknown frame type {body[0]}")
        if ftype is not FrameType.ERROR and self._state is ConnState.ESTABLISHED:
            body = self._unseal(body)
        if ftype not in _ACCEPTS[self._state]:
            raise FrameError(f"unexpected {ftype.name} frame while {self._state.value}")
        _HANDLERS[ftype](self, body)

    def _flush_new(self) -> bytes:
        """Seal every buffered message not yet sent on this connection, in order."""
        peer, start = self._peer, self._sent_upto
        assert peer is not None  # called only while current
        if start >= peer.last_seq:
            return b""
        self._sent_upto = peer.last_seq
        self._owed = 0  # each data frame carries the cumulative ack
        # unacked holds consecutive seqs, so the unsent ones are the last few; index
        # them from the right end (skipping from the left costs O(window) per send)
        unacked, ack = peer.unacked, peer.ack_upto
        fresh = min(len(unacked), peer.last_seq - start)
        if fresh == 1:
            seq, kind, payload = unacked[-1]
            return self._seal_data(seq, ack, kind, payload)
        batch = list(itertools.islice(reversed(unacked), fresh))
        batch.reverse()  # sealed in sequence order: each tag covers the next counter
        return b"".join([self._seal_data(seq, ack, kind, payload) for seq, kind, payload in batch])

    def _is_current(self) -> bool:
        peer = self._peer
        return self._state is ConnState.ESTABLISHED and peer is not None and peer.epoch == self._epoch

    def _require_current(self) -> None:
        peer = self._peer
        assert peer is not None  # called only once established
        if peer.epoch != self._epoch:
            raise _Refused("superseded by a newer connection from the same peer")

    def _seal_ack(self) -> bytes:
        self._owed = 0
        peer = self._peer
        assert peer is not None  # acks are sealed only while current
        return self._seal(f.encode_ack(peer.ack_upto))

    def _seal_data(self, seq: int, ack: int, kind: int, payload: bytes) -> bytes:
        """`_seal(encode_data(...))` with one copy of the payload."""
        return f.data_frame(seq, ack, kind, payload, self._tag_next)

    def _tag_next(self, body: bytes, more: bytes = b"") -> bytes:
        """The tag of the next sealed frame, whose body is `body + more`."""
        tag = self._send_tag.tag(self._send_ctr, body, more)
        self._send_ctr += 1
        return tag

    def _seal(self, body: bytes) -> bytes:
        return f.frame(body + self._tag_next(body))

    def _unseal(self, body: bytes) -> bytes:
        return body[: self._unsealed_end(body, 0, len(body))]

    def _unsealed_end(self, buf: bytes, start: int, end: int) -> int:
        """Where the sealed body buf[start:end] ends without its tag, once the tag is
        checked (a view: no copy of the body)."""
        cut = end - TAG_LEN
        if cut <= start:
            raise FrameError("bad frame authentication tag (altered, injected or replayed)")
        with memoryview(buf) as view:
            expected = self._recv_tag.tag(self._recv_ctr, view[start:cut])
            if not hmac.compare_digest(expected, view[cut:end]):
                raise FrameError("bad frame authentication tag (altered, injected or replayed)")
        self._recv_ctr += 1
        return cut

    def _fail(self, reason: str, notify: bool = True) -> None:
        if notify:
            self._out += f.frame(f.encode_error(reason))
        self._state = ConnState.FAILED
        self._events.append(ProtocolFailed(reason))


# DATA is not here: it is accepted only once established, where `receive_data` checks
# it on the read buffer and calls `_on_data` itself.
_HANDLERS = {
    FrameType.HELLO: LinkConnection._on_hello,
    FrameType.CHALLENGE: LinkConnection._on_challenge,
    FrameType.AUTH: LinkConnection._on_auth,
    FrameType.ACK: LinkConnection._on_ack,
    FrameType.ERROR: LinkConnection._on_error,
}
