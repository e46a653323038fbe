"""Per-peer link state that outlives connections (pure data, no I/O).

Rules of this module:
- `PeerLinks` is the one table of peers of a link endpoint; `LinkConnection`
  (protocol.py) reads it during a handshake and changes it only when it commits or
  is current (it owns the peer's `epoch`). Everyone else only reads it or `queue`s.
- Memory per peer is the unacked buffer; bounding it is the adapter's window.
- A sender may withdraw what a peer has not acknowledged (the peer died and others
  took over its work): the messages are returned and their slots become `WITHDRAWN`.
- A peer's entry is created by this node's own choice (`ensure`, `queue`) or by an
  authenticated handshake, never by an unauthenticated HELLO.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from server.link import frames as f
from server.link.frames import Kind

TAG_LEN = 16  # bytes of HMAC-SHA256 tag on each frame after the handshake
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

    @property
    def max_payload(self) -> int:
        return self.max_frame_size - f.DATA_HEADER_LEN - TAG_LEN


class PeerLink:
    """What this node knows about one peer across connections. Read-only outside."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_seq = 0  # last sequence number given to an outgoing message
        self.unacked: deque[tuple[int, Kind, bytes]] = deque()
        self.peer_session_id: bytes | None = None
        self.recv_seq = 0  # last in-order message delivered from peer_session_id
        self.epoch = 0  # bumped by each committed connection

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
        link = self.ensure(name)
        link.last_seq += 1
        link.unacked.append((link.last_seq, kind, payload))
        return link.last_seq

    def withdraw(self, name: str) -> list[tuple[Kind, bytes]]:
        """Take back every message `name` has not acknowledged, in order. Their sequence
        numbers stay, now carrying `WITHDRAWN` (an empty CONTROL message the receiving
        endpoint drops), so a peer that comes back still sees a gapless sequence."""
        link = self._links.get(name)
        if link is None:
            return []
        taken = [(kind, payload) for _, kind, payload in link.unacked if (kind, payload) != WITHDRAWN]
        link.unacked = deque((seq, *WITHDRAWN) for seq, _, _ in link.unacked)
        return taken

    def register(self, link: PeerLink) -> None:
        """Make `link` the peer's entry (a handshake committed)."""
        self._links[link.name] = link
