"""Two link cores wired back to back through an in-memory wire (h11 ConnectionPair).

Rules: no sockets, no clock. Nonces are deterministic counters; a "node" is a
`PeerLinks` table that outlives connections, and a restart is a new table with a new
session id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from presence_ha.server.link.frames import Kind
from presence_ha.server.link.protocol import (
    FrameReceived,
    HandshakeComplete,
    LinkConnection,
    Message,
    ProtocolFailed,
    Role,
)
from presence_ha.server.link.state import LinkConfig, PeerLinks

SECRET = b"cluster-secret-0123456789abcdef"
_nonces = itertools.count(1)


def nonce() -> bytes:
    return next(_nonces).to_bytes(16, "big")


def session(n: int) -> bytes:
    return n.to_bytes(16, "big")


def node(name: str, sid: int, secret: bytes = SECRET, **kw) -> PeerLinks:
    """A node that acks at the end of every read unless `ack_every` says otherwise (so
    a quiet wire means everything was acknowledged)."""
    kw.setdefault("ack_every", 1)
    return PeerLinks(LinkConfig(name, secret, session(sid), **kw))


@dataclass
class Side:
    conn: LinkConnection
    events: list = field(default_factory=list)
    pipe: bytearray = field(default_factory=bytearray)  # bytes on the wire towards the other

    def collect(self) -> None:
        self.events += self.conn.events()
        self.pipe += self.conn.data_to_send()

    def received(self, kind: Kind | None = None) -> list[bytes]:
        return [e.payload for e in self.events
                if isinstance(e, FrameReceived) and (kind is None or e.kind is kind)]

    def of(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]


class Pair:
    """One connection between initiator node `a` and responder node `b`."""

    def __init__(self, a: PeerLinks, b: PeerLinks, expected: str | None = None) -> None:
        expected = expected or "b"
        self._a, self._b = a, b
        self.a = Side(LinkConnection(Role.INITIATOR, a, nonce(), expected))
        self.b = Side(LinkConnection(Role.RESPONDER, b, nonce()))
        self.wire = bytearray()  # every byte that crossed, both ways
        self.a.collect()

    def deliver(self, src: Side, nbytes: int | None = None) -> int:
        """Move up to nbytes (all if None) from src's pipe to the other side."""
        dst = self.b if src is self.a else self.a
        n = len(src.pipe) if nbytes is None else min(nbytes, len(src.pipe))
        chunk, src.pipe[:n] = bytes(src.pipe[:n]), b""
        self.wire += chunk
        if chunk:
            dst.conn.receive_data(chunk)
            dst.collect()
        return n

    def run(self, max_rounds: int = 10_000) -> None:
        """Deliver both ways until the wire is quiet."""
        for _ in range(max_rounds):
            if not (self.deliver(self.a) or self.deliver(self.b)):
                return
        raise AssertionError("wire never went quiet")

    def send(self, src: Side, kind: Kind, payload: bytes) -> None:
        """Send through the connection; a responder that has not heard HELLO yet does
        not know its peer, so (like the adapter) it queues in its PeerLinks table."""
        if src.conn.peer_name is None and kind is not Kind.HEARTBEAT:
            links, peer = (self._a, "b") if src is self.a else (self._b, "a")
            links.queue(peer, kind, payload)
            return
        src.pipe += src.conn.send(Message(kind, payload))

    def failures(self) -> list[str]:
        return [e.reason for s in (self.a, self.b) for e in s.of(ProtocolFailed)]

    def established(self) -> bool:
        return bool(self.a.of(HandshakeComplete) and self.b.of(HandshakeComplete))
