"""Per-peer link state that outlives connections (pure data, no I/O).

Rules of this module:
- `PeerLinks` is the one table of peers of a link endpoint; `LinkConnection`
  (protocol.py) reads it during a handshake and changes it only when it commits or
  is current (it owns the peer's `epoch`). Everyone else only reads it or `queue`s.
- Memory per peer is the unacked buffer; bounding it is the adapter's window. Its
  entries are `(seq, int(kind), payload)`: tuples of ints and bytes, which the garbage
  collector stops tracking, so a full window does not bring on full collections.
- A receiver may hold a message (`PeerLink.hold`) until its processing is done: acks
  only ever cover processed messages (`ack_upto`), so what a peer acknowledged was
  done there, not just read, when it dies.
- A sender may withdraw what a peer has not acknowledged (the peer died and others
  took over its work): the messages are returned and their slots become `WITHDRAWN`.
- A peer's entry is created by this node's own choice (`ensure`, `queue`) or by an
  authenticated handshake, never by an unauthenticated HELLO.
- `LinkConfig.ack_every`: a receiver acks at once when that many messages are owed an
  ack; fewer wait for the adapter's delayed-ack timer (or ride on outgoing data). 1 acks
  at the end of every read. The default (64, a window of 1024 frees in 16 steps) spares
  a busy link one ACK frame, write and peer wakeup per read, which cost about as much
  as a routed stanza.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from presence_ha.server.link import frames as f
from presence_ha.server.link.crypto import TAG_LEN
from presence_ha.server.link.frames import Kind

MIN_SECRET_LEN = 16
WITHDRAWN = (Kind.CONTROL, b"")  # a message taken back by its sender: never delivered


class LocalProtocolError(Exception):
    """This side used the link API wrongly (bad config, oversized payload)."""


@dataclass(frozen=True, slots=True)
class LinkConfig:
    local_name: str
    secret: bytes
    session_id: bytes  # random per process: a new value tells peers "I restarted"
    max_frame_size: int = 1 << 20
    allowed_peers: frozenset[str] | None = None  # None: any node knowing the secret
    ack_every: int = 64  # messages owed an ack that make the receiver ack at once

    def __post_init__(self) -> None:
        try:
            f.name_bytes(self.local_name)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from exc
        if len(self.session_id) != f.SESSION_ID_LEN:
            raise LocalProtocolError(f"session_id must be {f.SESSION_ID_LEN} bytes")
        if len(self.secret) < MIN_SECRET_LEN:
            raise LocalProtocolError(f"cluster secret must be >= {MIN_SECRET_LEN} bytes")
        if self.max_frame_size < 1024:
            raise LocalProtocolError("max_frame_size must be >= 1024")
        if self.ack_every < 1:
            raise LocalProtocolError("ack_every must be >= 1")

    @property
    def max_payload(self) -> int:
        return self.max_frame_size - f.DATA_HEADER_LEN - TAG_LEN


class PeerLink:
    """What this node knows about one peer across connections. Read-only outside."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_seq = 0  # last sequence number given to an outgoing message
        self.unacked: deque[tuple[int, int, bytes]] = deque()  # (seq, kind, payload)
        self.peer_session_id: bytes | None = None
        self.recv_seq = 0  # last in-order message delivered from peer_session_id
        self.epoch = 0  # bumped by each committed connection
        self._pending: deque[int] = deque()  # received from the peer, still being processed
        self._done: set[int] = set()  # processed out of order, behind a pending one
        self._session_gen = 0  # bumped when a new peer session is adopted

    @property
    def ack_upto(self) -> int:
        """What may be acknowledged: every message up to it received and processed."""
        return self._pending[0] - 1 if self._pending else self.recv_seq

    def adopt(self, peer_session: bytes, recv_seq: int) -> None:
        """A new peer session (first contact or a restart): its sequence starts over."""
        self.peer_session_id, self.recv_seq = peer_session, recv_seq
        self._pending.clear()
        self._done.clear()
        self._session_gen += 1

    def hold(self, seq: int) -> tuple[int, int]:
        """Keep message `seq` unacknowledged until `release(token)`: its processing
        (the receiver's work, not just its arrival) must be done before the sender
        may forget it."""
        self._pending.append(seq)
        return self._session_gen, seq

    def release(self, token: tuple[int, int]) -> bool:
        """Message processed; True if `ack_upto` moved (an ack is owed)."""
        gen, seq = token
        if gen != self._session_gen:
            return False  # of a peer session since replaced
        if not self._pending or self._pending[0] != seq:
            self._done.add(seq)
            return False
        self._pending.popleft()
        while self._pending and self._pending[0] in self._done:
            self._done.discard(self._pending.popleft())
        return True

    @property
    def first_unacked(self) -> int:
        return self.unacked[0][0] if self.unacked else self.last_seq + 1

    @property
    def in_flight(self) -> int:
        return len(self.unacked)


class PeerLinks:
    """One `PeerLink` per peer name, created when a handshake commits (or a send)."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self._links: dict[str, PeerLink] = {}

    def get(self, name: str) -> PeerLink:
        """The peer's state; a fresh, unregistered one for an unknown name (so that an
        unauthenticated HELLO cannot grow this table)."""
        return self._links.get(name) or PeerLink(name)

    def ensure(self, name: str) -> PeerLink:
        """The peer's state, registered: for names this node chose itself."""
        return self._links.setdefault(name, self.get(name))

    def in_flight(self, name: str) -> int:
        link = self._links.get(name)
        return link.in_flight if link else 0

    def queue(self, name: str, kind: Kind, payload: bytes) -> int:
        """Buffer a reliable message for `name`; returns its sequence number."""
        if kind is Kind.HEARTBEAT:
            raise LocalProtocolError("HEARTBEAT is unsequenced and cannot be queued")
        if len(payload) > self.config.max_payload:
            raise LocalProtocolError(
                f"payload of {len(payload)} bytes exceeds {self.config.max_payload}"
            )
        link = self._links.get(name) or self.ensure(name)
        seq = link.last_seq = link.last_seq + 1
        link.unacked.append((seq, kind.value, payload))
        return seq

    def withdraw(self, name: str) -> list[tuple[Kind, bytes]]:
        """Take back every message `name` has not acknowledged, in order. Their sequence
        numbers stay, now carrying `WITHDRAWN` (an empty CONTROL message the receiving
        endpoint drops), so a peer that comes back still sees a gapless sequence."""
        link = self._links.get(name)
        if link is None:
            return []
        taken = [(Kind(kind), payload) for _, kind, payload in link.unacked if (kind, payload) != WITHDRAWN]
        link.unacked = deque((seq, int(Kind.CONTROL), b"") for seq, _, _ in link.unacked)  # WITHDRAWN
        return taken

    def register(self, link: PeerLink) -> None:
        """Make `link` the peer's entry (a handshake committed)."""
        self._links[link.name] = link
