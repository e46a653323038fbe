"""Bytes and TLS of one client connection: a buffered protocol that does STARTTLS itself.

Why: asyncio's stream stack (StreamReader, StreamWriter, SSLProtocol and its app
transport) costs every idle TLS session about 8 kB of Python objects (empty deques
alone are 0.6 kB each) and a task parked on a read, and every stanza crosses its
layers twice. Here one small object per connection reads into one buffer per event
loop, runs TLS on `ssl.MemoryBIO`s (the SSL object OpenSSL keeps anyway, nothing
more), and hands plaintext to its receiver (`server.net.c2s.Connection`).

Rules of this module:
- The receiver gets `data_received(plaintext)` and, once, `connection_lost(exc)`;
  both are called synchronously from the protocol callbacks, in order, and must not
  block. A peer's TLS fault or close_notify ends the connection like an EOF.
- Before `start_tls` bytes pass through as they are. `start_tls(context, timeout,
  early)` switches to TLS: `early` is ciphertext the receiver had queued as plaintext
  (a ClientHello that arrived while it was still handling <starttls/>). It returns
  when the handshake is done and raises `ssl.SSLError`, `ConnectionError` or
  `TimeoutError` when it fails. `begin_tls(context)` is the same from the first byte
  (XEP-0368 direct TLS): nothing awaits it; a failed handshake aborts the connection.
  `ssl_object` is the TLS connection (channel bindings), None before TLS.
- Writes never block: `write` encrypts (once TLS is on) and queues; `drain()` waits
  while the transport's buffer is above its high-water mark (flow control);
  `write_buffer_size()` is what is queued for the peer.
- Writes are coalesced per loop turn: the first write of a turn goes out at once (no
  added latency), later writes of the same turn are joined and go out, as one TLS
  record and one send, when the turn ends. Why: a busy node delivers dozens of
  stanzas to one client per turn (a routed burst from a peer node); one record and
  one syscall each cost more than the rest of the delivery (measured: `_flush` was
  the largest self-time of a receiving node). What a turn joins goes out whenever it
  reaches `PENDING_MAX` (bounded memory; records stay large). `close` writes what is
  pending first, `start_tls` too (a `<proceed/>` goes out in the clear), `abort`
  drops it.
- `close()` sends TLS close_notify and closes after the buffer is flushed; `abort()`
  drops the connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from typing import Protocol

log = logging.getLogger(__name__)
READ_SIZE = 64 * 1024  # the per-loop receive buffer; one TLS read returns at most this
PENDING_MAX = 64 * 1024  # a turn's joined writes go out when they reach this

_BUFFERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = weakref.WeakKeyDictionary()


def _loop_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The receive buffer shared by every connection of `loop`: the loop fills it and
    `buffer_updated` empties it at once, both on the loop's thread."""
    buffer = _BUFFERS.get(loop)
    if buffer is None:
        buffer = _BUFFERS[loop] = memoryview(bytearray(READ_SIZE))
    return buffer


class Receiver(Protocol):
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, exc: BaseException | None) -> None: ...


class ClientTransport(asyncio.BufferedProtocol):
    __slots__ = (
        "_accept",
        "_buffer",
        "_drain",
        "_handshake",
        "_incoming",
        "_lost",
        "_outgoing",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_receiver",
        "_ssl",
        "_transport",
        "peername",
    )

    def __init__(self, accept) -> None:  # accept(transport) -> Receiver, at connection_made
        self._accept = accept
        self._receiver: Receiver | None = None  # None until accept() made it
        # Set by connection_made, which asyncio calls before any other callback.
        self._transport: asyncio.Transport
        self._buffer: memoryview
        self._ssl: ssl.SSLObject | None = None  # None: plain TCP; set with both BIOs by start_tls
        self._incoming: ssl.MemoryBIO
        self._outgoing: ssl.MemoryBIO
        self._handshake: asyncio.Future[None] | None = None  # while the TLS handshake runs
        self._drain: asyncio.Future[None] | None = None  # while a writer waits for room
        self._paused = False
        self._lost = False
        self.peername: str = "unknown"
        self._pending: list[bytes] | None = None  # None: nothing written this loop turn
        self._pending_bytes = 0

    # -- asyncio protocol callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._buffer = _loop_buffer(asyncio.get_running_loop())
        peer = transport.get_extra_info("peername")
        self.peername = str(peer[0]) if peer else "unknown"
        self._receiver = self._accept(self)
        self._accept = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        tls = self._ssl
        if tls is None:
            assert self._receiver is not None
            self._receiver.data_received(bytes(self._buffer[:nbytes]))
            return
        self._incoming.write(self._buffer[:nbytes])
        self._tls_received(tls)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._wake_drain()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionResetError("connection lost during the TLS handshake"))
        if self._receiver is not None:
            self._receiver.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    # -- TLS -------------------------------------------------------------------------------
    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._ssl

    def begin_tls(self, context: ssl.SSLContext) -> None:
        """TLS from the first byte (called from `accept`, before any data)."""
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        handshake = self._handshake = asyncio.get_running_loop().create_future()
        handshake.add_done_callback(self._direct_handshake_done)

    def _direct_handshake_done(self, handshake: asyncio.Future[None]) -> None:
        self._handshake = None
        if not handshake.cancelled() and (exc := handshake.exception()) is not None:
            log.info("TLS handshake with %s failed: %s", self.peername, exc)

    async def start_tls(self, context: ssl.SSLContext, timeout_s: float, early: bytes = b"") -> None:
        self._end_turn()  # what was written before (<proceed/>) goes out in the clear
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshake = asyncio.get_running_loop().create_future()
        if early:
            self._incoming.write(early)
            self._tls_received(tls)
        try:
            await asyncio.wait_for(asyncio.shield(self._handshake), timeout_s)
        finally:
            self._handshake = None

    def _tls_received(self, tls: ssl.SSLObject) -> None:
        """Ciphertext arrived: advance the handshake, then pass on what decrypts."""
        handshake = self._handshake
        if handshake is not None and not handshake.done() and not self._advance_handshake(tls, handshake):
            return
        chunks, eof = [], False
        try:
            while chunk := tls.read(READ_SIZE):
                chunks.append(chunk)
            eof = True  # b"": the peer's close_notify
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError as exc:
            log.info("TLS error from %s: %s", self.peername, exc)
            self._flush()
            self.abort()
            return
        self._flush()  # alerts, key updates
        if chunks:
            assert self._receiver is not None
            self._receiver.data_received(b"".join(chunks))
        if eof and not self._lost:
            self._transport.close()  # as an EOF; connection_lost follows

    def _advance_handshake(self, tls: ssl.SSLObject, handshake: asyncio.Future[None]) -> bool:
        """One step of the handshake; True once it is done."""
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ValueError) as exc:
            self._flush()  # the alert, if any
            handshake.set_exception(exc)
            self.abort()
            return False
        self._flush()
        handshake.set_result(None)
        return True

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    # -- writing and closing -------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not data or self._transport.is_closing():
            return
        if self._pending is not None:  # already wrote this turn: join the turn's last write
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes >= PENDING_MAX:  # a big turn goes out in pieces
                pending, self._pending, self._pending_bytes = self._pending, [], 0
                self._send(b"".join(pending))
            return
        self._send(data)
        self._pending = []
        asyncio.get_running_loop().call_soon(self._end_turn)

    def _end_turn(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, None, 0
        if pending and not self._transport.is_closing():
            self._send(pending[0] if len(pending) == 1 else b"".join(pending))

    def _send(self, data: bytes) -> None:
        if self._ssl is None:
            self._transport.write(data)
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            log.info("TLS write to %s failed: %s", self.peername, exc)
            self.abort()
            return
        self._flush()

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    async def drain(self) -> None:
        """Wait while the peer is not reading fast enough (returns at once if lost)."""
        while self._paused and not self._lost:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drain)

    def _wake_drain(self) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        if not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._transport.is_closing():
            self._transport.resume_reading()

    @property
    def lost(self) -> bool:
        return self._lost

    def close(self) -> None:
        """End the connection after what was written (TLS: close_notify first)."""
        if self._transport.is_closing():
            return
        self._end_turn()
        if self._ssl is not None and self._handshake is None:
            with contextlib.suppress(ssl.SSLError):  # the peer's close_notify is not there yet (want-read)
                self._ssl.unwrap()
            self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending, self._pending_bytes = None, 0
        self._transport.abort()
