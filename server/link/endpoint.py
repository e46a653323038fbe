"""The part of the link adapter that server and client share: one peer table, the
bounded send window, and serving one connection (read, dispatch, keepalive, timeouts).

Rules of this module:
- It moves bytes, runs timers and calls callbacks; every protocol decision is made by
  `LinkConnection` (protocol.py).
- One current connection per peer: a newer authenticated one replaces the older.
- Memory is bounded: at most `LinkOptions.window` unacknowledged messages per peer.
  `send` waits for room (back-pressure), `try_send` returns False; nothing is dropped
  silently. Heartbeats are never queued (`send_heartbeat` returns False when down).
- Liveness: a keepalive every `heartbeat_interval_s`; a connection with no bytes for
  `dead_after_s` (or no handshake within `handshake_timeout_s`) is `PeerSilent`.
- Writes are coalesced per loop turn: the first output of a turn is written at once (no
  added latency), later output of the same turn is joined into one write when the turn
  ends (one syscall and one wakeup of the peer per turn, not per frame). A link that
  wrote less than `BUSY_S` ago is streaming: then the first output waits for the end
  of the turn too, so a busy turn costs one write and wakes the peer once (measured:
  +11% cross-node messages/s), while a link carrying one stanza now and then (a
  cross-node round trip takes more than `BUSY_S` here) still writes at once.
  Everything a connection writes goes through `_write`, so the sealing order is the
  wire order.
- A frame callback may return a future (the work the frame started): the frame is
  acknowledged only once it is done (`PeerLink.hold`), so a peer's ack means done.
- Acks owed (`AckOwed`) go out `ack_delay_s` later at the latest (`DelayedAck`).
- What is read is decoded `DECODE_SLICE` bytes at a time, and when the frame callbacks
  of a slice started work that waits (they returned something: a future, or any
  other value), the loop turns before the next slice: that work runs first, so a burst
  is not all decoded and queued first (held longer, such objects outlive the young GC
  generations and bring on full collections, which cost a busy node more than
  decoding). Slices whose frames were all handled at once follow each other in one
  turn: what they wrote (a receiving node's writes to its clients) goes out together.
- A withdrawn message (state.py) is acknowledged but never passed to `on_frame`.
- Bytes are handled as they arrive (`Wire`, an asyncio protocol: no reader task to wake,
  no timeout to re-arm per read); silence is watched by one timer per connection that
  re-arms itself at `last_rx + dead_after_s`.
- Callbacks are plain functions called on the loop; they should not raise (if one
  does, it is logged and the connection is reset; that frame counts as delivered).
- With `LinkTls` (secure.py) the peer's certificate must name the node expected (the
  one dialed, or a peer of this node) before a byte of the link's own handshake goes
  out, and the link handshake must then name that same node. A refusal (`LinkRejected`)
  is logged as one warning naming who, from where and why; the same refusal repeated
  (a foreign node redialing) is logged again only after `REFUSAL_LOG_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from presence_ha.server.link import status as st
from presence_ha.server.link.frames import Kind
from presence_ha.server.link.protocol import (
    AckOwed,
    AckReceived,
    DelayedAck,
    FrameReceived,
    HandshakeComplete,
    Keepalive,
    LinkConnection,
    Message,
    ProtocolFailed,
)
from presence_ha.server.link.secure import LinkTls, handshake_refusal, identity_refusal, node_of
from presence_ha.server.link.state import WITHDRAWN, LinkConfig, PeerLinks

log = logging.getLogger(__name__)

DECODE_SLICE = 1 << 13  # about 50 routed stanzas
BUSY_S = 0.0003  # a link that wrote this recently is busy: a turn's frames all go in one write
REFUSAL_LOG_EVERY_S = 60.0  # one warning per distinct refusal in this long
_PORT = re.compile(r":\d+\b")

OnFrame = Callable[[str, Kind, bytes], object]  # a future: ack once done; other non-None: work waits
OnUp = Callable[[st.LinkStatus], None]
OnDown = Callable[[st.LinkDown], None]


def _ignore(_status: object) -> None:
    return None


class LinkClosed(Exception):
    """The endpoint was closed; nothing more can be sent through it."""


@dataclass(frozen=True, slots=True)
class LinkOptions:
    window: int = 1024  # max unacknowledged messages per peer
    heartbeat_interval_s: float = 1.0
    dead_after_s: float = 5.0
    handshake_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    ack_delay_s: float = 0.005  # longest wait of an owed ack (LinkConfig.ack_every > 1)


class Conn:
    __slots__ = (
        "ack_timer",
        "cert_name",
        "core",
        "done",
        "last_rx",
        "last_tx",
        "opened",
        "peer",
        "pending",
        "replaced",
        "rest",
        "transport",
        "up",
        "watch",
    )

    def __init__(self, transport: asyncio.Transport, core: LinkConnection, peer: str | None) -> None:
        self.transport, self.core, self.peer = transport, core, peer
        self.up = self.replaced = False
        self.cert_name: str | None = None  # the node its TLS certificate names (LinkTls)
        self.pending: list[bytes] | None = None  # None: nothing written this loop turn
        self.ack_timer: asyncio.TimerHandle | None = None
        self.watch: asyncio.TimerHandle | None = None  # the silence timer
        loop = asyncio.get_running_loop()
        self.last_rx = self.opened = loop.time()  # when bytes last arrived; when it was opened
        self.last_tx = float("-inf")  # when bytes were last written
        self.rest: bytes | None = None  # read, not decoded yet (decoding waits a turn)
        self.done: asyncio.Future[st.LinkDown] = loop.create_future()  # why it ended

    @property
    def name(self) -> str | None:
        """The peer's name; None while an accepted connection has not heard it."""
        return self.peer or self.core.peer_name

    def end(self, down: st.LinkDown) -> None:
        if not self.done.done():
            self.done.set_result(down)


class Wire(asyncio.Protocol):
    """The bytes of one link connection: `Endpoint` decodes them as they arrive."""

    def __init__(self, endpoint: Endpoint, make_core: Callable[[], LinkConnection], peer: str | None) -> None:
        self._endpoint, self._make_core, self._peer = endpoint, make_core, peer
        self.conn: Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn = Conn(transport, self._make_core(), self._peer)  # type: ignore[arg-type]
        self._endpoint._open(self.conn)

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None  # connection_made came first
        self._endpoint._received(self.conn, data)

    def eof_received(self) -> bool:
        assert self.conn is not None  # connection_made came first
        self.conn.end(st.PeerClosed(self.conn.name, "end of stream"))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.conn is None:
            return
        if isinstance(exc, ssl.SSLError):  # TLS 1.3: the server checks our certificate after our handshake
            self.conn.end(st.LinkRejected(self.conn.name, f"TLS: {where(self.conn.transport)}: "
                                                          f"{handshake_refusal(exc)}"))
        else:
            self.conn.end(st.PeerClosed(self.conn.name, repr(exc) if exc else "end of stream"))


def where(transport: asyncio.BaseTransport) -> str:
    """host:port of the other end of `transport`."""
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "an unknown address"


class Endpoint:
    """What server and client share: peers' state, sending, serving one connection."""

    def __init__(self, config: LinkConfig, on_frame: OnFrame, on_up: OnUp | None,
                 on_down: OnDown | None, options: LinkOptions, tls: LinkTls | None = None) -> None:
        self._links = PeerLinks(config)
        self._tls = tls  # peers' certificates must name their node
        self._refusals_logged: dict[str, float] = {}
        self._on_frame, self._opt = on_frame, options
        self._on_up, self._on_down = on_up or _ignore, on_down or _ignore
        self._current: dict[str, Conn] = {}
        self._conns: set[Conn] = set()
        self._room: dict[str, asyncio.Event] = {}
        self._closed = False

    def _in_flight(self, peer: str) -> int:
        return self._links.in_flight(peer)

    def set_secret(self, secret: bytes) -> None:
        """Authenticate connections made from now on with `secret` (a rotated cluster
        secret); established connections keep their keys and stay up."""
        self._links.config = dataclasses.replace(self._links.config, secret=secret)

    async def _send(self, peer: str, kind: Kind, payload: bytes) -> None:
        while not self._closed and self._links.in_flight(peer) >= self._opt.window:
            room = self._room.setdefault(peer, asyncio.Event())
            room.clear()
            await room.wait()
        self._push(peer, kind, payload)

    def _withdraw(self, peer: str, silent_s: float | None = None) -> list[tuple[Kind, bytes]]:
        """What `peer` has not acknowledged, taken back: while it is not connected, or
        (with `silent_s`) when its connection has been silent that long (a frozen peer:
        the connection is dropped first). A peer that talks is acknowledging, and its
        messages are on their way."""
        conn = self._current.get(peer)
        if conn is not None:
            if silent_s is None or asyncio.get_running_loop().time() - conn.last_rx < silent_s:
                return []
            log.info("link %s: %s silent for %.1fs: connection dropped, unacknowledged messages taken back",
                     self._links.config.local_name, peer, asyncio.get_running_loop().time() - conn.last_rx)
            del self._current[peer]
            conn.replaced = True  # no down report for this one: the caller knows
            conn.transport.abort()
        return self._links.withdraw(peer)

    def _try_send(self, peer: str, kind: Kind, payload: bytes) -> bool:
        if self._links.in_flight(peer) >= self._opt.window:
            return False
        self._push(peer, kind, payload)
        return True

    def _push(self, peer: str, kind: Kind, payload: bytes) -> None:
        if self._closed:
            raise LinkClosed(f"link endpoint {self._links.config.local_name} is closed")
        if kind is Kind.HEARTBEAT:
            raise ValueError("heartbeats are unreliable: use send_heartbeat")
        conn = self._current.get(peer)
        if conn is None:
            self._links.queue(peer, kind, payload)
        else:
            self._write(conn, conn.core.send_message(kind, payload))

    def _heartbeat(self, peer: str, payload: bytes) -> bool:
        conn = self._current.get(peer)
        if conn is None:
            return False
        data = conn.core.send(Message(Kind.HEARTBEAT, payload))
        self._write(conn, data)
        return bool(data)

    def _write(self, conn: Conn, data: bytes) -> None:
        """Frames go out at the end of the turn in one write. On a connection already
        closing (the peer hung up, its down report not processed yet) the bytes are
        dropped as a network would drop them: the frames stay unacknowledged, so they
        are sent again on the next connection or taken back (`_withdraw`)."""
        if not data or conn.transport.is_closing():
            return
        if conn.pending is not None:  # already wrote this turn: join the turn's last write
            conn.pending.append(data)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - conn.last_tx < BUSY_S:  # busy: the whole turn goes in one write
            conn.pending = [data]
        else:
            conn.transport.write(data)
            conn.last_tx = now
            conn.pending = []
        loop.call_soon(self._flush, conn)

    @staticmethod
    def _flush(conn: Conn) -> None:
        pending, conn.pending = conn.pending, None
        if pending and not conn.transport.is_closing():
            conn.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
            conn.last_tx = asyncio.get_running_loop().time()

    def _hold(self, peer: str, seq: int, work: asyncio.Future) -> None:
        """No ack covers `seq` until the work its callback started is done."""
        token = self._links.ensure(peer).hold(seq)
        # A cancelled work item (shutdown) is never acknowledged: the peer keeps it.
        work.add_done_callback(lambda w: None if w.cancelled() else self._processed(peer, token))

    def _processed(self, peer: str, token: tuple[int, int]) -> None:
        if not self._links.ensure(peer).release(token):
            return
        conn = self._current.get(peer)
        if conn is not None:
            conn.core.progressed()
            if conn.ack_timer is None:
                conn.ack_timer = asyncio.get_running_loop().call_later(self._opt.ack_delay_s, self._delayed_ack, conn)

    def _delayed_ack(self, conn: Conn) -> None:
        conn.ack_timer = None
        self._write(conn, conn.core.send(DelayedAck()))

    def _open(self, conn: Conn) -> None:
        """A connection is made (`Wire`): say hello, start its keepalive and silence timer."""
        self._conns.add(conn)
        if self._tls is not None:
            refusal = self._identity_refusal(conn)
            if refusal is not None:
                conn.end(st.LinkRejected(conn.peer, refusal))
                conn.transport.abort()
                return
        self._write(conn, conn.core.data_to_send())
        conn.watch = asyncio.get_running_loop().call_at(conn.opened + self._opt.handshake_timeout_s,
                                                        self._watch, conn)

    def _identity_refusal(self, conn: Conn) -> str | None:
        """Why the node named by the peer's certificate may not have this link (None: it may)."""
        transport = conn.transport
        named = node_of(transport.get_extra_info("peercert"))
        refusal = identity_refusal(named, conn.peer, self._links.config.allowed_peers)
        if refusal is not None:
            return f"TLS: {where(transport)}: {refusal}"
        conn.cert_name = named
        return None

    async def _serve(self, conn: Conn) -> st.LinkDown:
        """Until `conn` ends: why it did."""
        beat = asyncio.create_task(self._beat(conn))
        try:
            return await asyncio.shield(conn.done)
        finally:
            beat.cancel()
            for timer in (conn.ack_timer, conn.watch):
                if timer is not None:
                    timer.cancel()
            self._conns.discard(conn)
            if conn.peer is not None and self._current.get(conn.peer) is conn:
                del self._current[conn.peer]
            self._flush(conn)
            conn.transport.close()  # flushes a final ERROR frame, if any

    def _watch(self, conn: Conn) -> None:
        """The silence timer: no handshake, or no bytes, within the timeout ends `conn`."""
        deadline = conn.last_rx + self._opt.dead_after_s if conn.up else conn.opened + self._opt.handshake_timeout_s
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            conn.watch = None
            what = "no bytes" if conn.up else "no handshake"
            conn.end(st.PeerSilent(conn.name, f"{what} within the timeout"))
        else:
            conn.watch = loop.call_at(deadline, self._watch, conn)

    def _received(self, conn: Conn, data: bytes) -> None:
        if conn.done.done():
            return
        conn.last_rx = asyncio.get_running_loop().time()
        if conn.rest is not None:  # still decoding earlier bytes: these follow them
            conn.rest += data
        elif self._decode(conn, data) and not conn.transport.is_closing():
            conn.transport.pause_reading()  # until the rest is decoded

    def _decode(self, conn: Conn, data: bytes) -> bool:
        """Decode `data` a slice at a time; True: a slice started work that waits, the
        rest (`conn.rest`) is decoded on the next turn, after that work."""
        for start in range(0, len(data), DECODE_SLICE):
            conn.core.receive_data(data[start : start + DECODE_SLICE])
            try:
                down, started = self._dispatch(conn)
            except Exception as exc:  # a callback raised: log it, reset this connection
                log.exception("link %s: callback failed, resetting the connection", conn.peer)
                conn.end(st.LinkCrashed(conn.peer, repr(exc)))
                return False
            self._write(conn, conn.core.data_to_send())
            if down is not None:
                conn.end(down)
                return False
            if started and start + DECODE_SLICE < len(data):
                conn.rest = data[start + DECODE_SLICE :]
                asyncio.get_running_loop().call_soon(self._decode_rest, conn)
                return True
        return False

    def _decode_rest(self, conn: Conn) -> None:
        rest, conn.rest = conn.rest, None
        if conn.done.done() or rest is None:
            return
        if not self._decode(conn, rest) and not conn.transport.is_closing():
            conn.transport.resume_reading()

    def _dispatch(self, conn: Conn) -> tuple[st.LinkDown | None, bool]:
        """(why the link is down, or None; whether a frame callback started work that waits)."""
        started = False
        for event in conn.core.events():
            if isinstance(event, FrameReceived):
                assert conn.peer is not None  # set on HandshakeComplete, which comes first
                if event.payload or event.kind is not WITHDRAWN[0]:  # not WITHDRAWN (state.py)
                    work = self._on_frame(conn.peer, event.kind, event.payload)
                    if work is not None:
                        started = True
                        if isinstance(work, asyncio.Future) and event.seq:
                            self._hold(conn.peer, event.seq, work)
            elif isinstance(event, AckReceived):
                assert conn.peer is not None  # set on HandshakeComplete, which comes first
                self._wake(conn.peer)
            elif isinstance(event, AckOwed):
                if conn.ack_timer is None:
                    conn.ack_timer = asyncio.get_running_loop().call_later(
                        self._opt.ack_delay_s, self._delayed_ack, conn)
            elif isinstance(event, HandshakeComplete):
                if conn.cert_name is not None and event.peer_name != conn.cert_name:
                    return st.LinkRejected(event.peer_name, (
                        f"TLS: {where(conn.transport)}: its link handshake names {event.peer_name!r}, "
                        f"its certificate {conn.cert_name!r}")), started
                self._link_up(conn, event)
            elif isinstance(event, ProtocolFailed):
                return st.LinkRejected(conn.peer or conn.core.peer_name, event.reason), started
        return None, started

    def _link_up(self, conn: Conn, event: HandshakeComplete) -> None:
        conn.peer, conn.up = event.peer_name, True
        old = self._current.get(event.peer_name)
        if old is not None:
            old.replaced = True
            old.transport.abort()
        self._current[event.peer_name] = conn
        self._wake(event.peer_name)
        kind = st.PeerRestarted if event.restarted else st.LinkUp
        cipher = conn.transport.get_extra_info("cipher")  # (name, version, bits) over TLS
        log.info("link %s -> %s up (restarted=%s, %s)", self._links.config.local_name, event.peer_name,
                 event.restarted, f"{cipher[1]} {cipher[0]}" if cipher else "no TLS")
        self._on_up(kind(event.peer_name, event.peer_session_id))

    async def _beat(self, conn: Conn) -> None:
        while True:
            await asyncio.sleep(self._opt.heartbeat_interval_s)
            self._write(conn, conn.core.send(Keepalive()))

    def _wake(self, peer: str) -> None:
        room = self._room.get(peer)
        if room is not None and self._links.in_flight(peer) < self._opt.window:
            room.set()

    def _report_down(self, conn: Conn | None, down: st.LinkDown) -> None:
        if self._closed or (conn is not None and conn.replaced):
            return
        if isinstance(down, st.LinkRejected):
            what = f"link with {down.peer_name} refused" if down.peer_name else "refused an incoming link"
            self._log_refusal(f"link {self._links.config.local_name}: {what}: {down.reason}")
        else:
            log.info("link %s: %s", self._links.config.local_name, down)
        self._on_down(down)

    def _log_refusal(self, line: str) -> None:
        """One warning per distinct refusal (ports aside) per `REFUSAL_LOG_EVERY_S`."""
        now, key = asyncio.get_running_loop().time(), _PORT.sub("", line)
        last = self._refusals_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_EVERY_S:
            log.debug("%s", line)
            return
        self._refusals_logged[key] = now
        log.warning("%s", line)

    async def _shutdown(self, tasks: set[asyncio.Task], cancel: bool) -> None:
        """Abort every connection, then wait for `tasks` (cancelling them first if
        `cancel`; an accepted connection's task ends by itself once it is aborted)."""
        self._closed = True
        for room in self._room.values():
            room.set()
        for conn in list(self._conns):
            conn.transport.abort()
        for task in tasks if cancel else ():
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
