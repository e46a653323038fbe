"""`ClientTransport`: plaintext, STARTTLS (with a real client SSL object on memory BIOs),
close_notify, TLS garbage and flow control, against an in-memory socket transport."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from presence_ha.server.net.transport import ClientTransport
from presence_ha.server.tls import ensure_node_certificate, make_ca, server_context


class FakeSocket(asyncio.Transport):
    """What asyncio's socket transport does for the protocol, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closing = self.aborted = self.reading_paused = False
        self.buffered = 0

    def get_extra_info(self, name, default=None):
        return ("127.0.0.9", 5555) if name == "peername" else default

    def write(self, data) -> None:
        self.sent += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def take(self) -> bytes:
        data, self.sent = bytes(self.sent), bytearray()
        return data


class Receiver:
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[BaseException | None] = []

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc) -> None:
        self.lost.append(exc)


def feed(transport: ClientTransport, data: bytes) -> None:
    """What the event loop does with received bytes (in reads of the buffer's size)."""
    while data:
        buffer = transport.get_buffer(len(data))
        n = min(len(buffer), len(data))
        buffer[:n] = data[:n]
        transport.buffer_updated(n)
        data = data[n:]


@pytest.fixture
def server_tls(tmp_path):
    cert, key = ensure_node_certificate(tmp_path, "n1", "example.test", ["127.0.0.1"], make_ca("example.test"))
    return server_context(cert, key)


@pytest.fixture
def client_tls():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect() -> tuple[ClientTransport, FakeSocket, Receiver]:
    receiver, sock = Receiver(), FakeSocket()
    transport = ClientTransport(lambda _t: receiver)
    transport.connection_made(sock)
    return transport, sock, receiver


class TlsClient:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname="example.test")

    def step(self, received: bytes = b"") -> bytes:
        """Feed what the server sent; return what the client sends now."""
        if received:
            self.incoming.write(received)
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        return self.outgoing.read()


async def handshake(transport, sock, client, context, early: bool = False) -> None:
    hello = client.step()
    task = asyncio.ensure_future(transport.start_tls(context, 5, hello if early else b""))
    await asyncio.sleep(0)
    if not early:
        feed(transport, hello)
    for _ in range(5):
        out = client.step(sock.take())
        if out:
            feed(transport, out)
        if task.done():
            break
        await asyncio.sleep(0)
    await task


async def test_plaintext_passes_through_and_eof_closes():
    transport, sock, receiver = connect()
    assert transport.peername == "127.0.0.9"
    feed(transport, b"<stream:stream>")
    assert bytes(receiver.data) == b"<stream:stream>"
    transport.write(b"<proceed/>")
    assert sock.take() == b"<proceed/>"
    assert transport.eof_received() is False
    transport.connection_lost(None)
    assert receiver.lost == [None] and transport.lost


@pytest.mark.parametrize("early", [False, True], ids=["hello-after", "hello-queued-early"])
async def test_starttls_handshake_then_data_both_ways(server_tls, client_tls, early):
    transport, sock, receiver = connect()
    client = TlsClient(client_tls)
    await handshake(transport, sock, client, server_tls, early)
    client.obj.write(b"<stream:stream to='example.test'>" * 3000)  # several TLS records
    feed(transport, client.outgoing.read())
    assert bytes(receiver.data) == b"<stream:stream to='example.test'>" * 3000
    transport.write(b"<features/>")
    client.incoming.write(sock.take())
    assert client.obj.read() == b"<features/>"


async def test_close_notify_from_the_peer_ends_the_connection(server_tls, client_tls):
    transport, sock, _receiver = connect()
    client = TlsClient(client_tls)
    await handshake(transport, sock, client, server_tls)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.obj.unwrap()
    feed(transport, client.outgoing.read())
    assert sock.closing and not sock.aborted  # closed as on EOF


async def test_our_close_sends_close_notify(server_tls, client_tls):
    transport, sock, _receiver = connect()
    client = TlsClient(client_tls)
    await handshake(transport, sock, client, server_tls)
    transport.close()
    assert sock.closing
    client.incoming.write(sock.take())
    assert client.obj.read() == b""  # the end of the TLS stream, not a ragged EOF:
    client.obj.unwrap()  # the client's own shutdown completes without waiting for more


async def test_garbage_instead_of_a_client_hello_fails_the_handshake(server_tls):
    transport, sock, receiver = connect()
    task = asyncio.ensure_future(transport.start_tls(server_tls, 5))
    await asyncio.sleep(0)
    feed(transport, b"<stream:stream xmlns='jabber:client'>" * 4)
    with pytest.raises(ssl.SSLError):
        await task
    assert sock.aborted and not receiver.data


async def test_handshake_times_out(server_tls):
    transport, _sock, _receiver = connect()
    with pytest.raises(TimeoutError):
        await transport.start_tls(server_tls, 0.05)


async def test_drain_waits_while_writing_is_paused():
    transport, _sock, receiver = connect()
    transport.pause_writing()
    waiter = asyncio.ensure_future(transport.drain())
    await asyncio.sleep(0)
    assert not waiter.done()
    transport.resume_writing()
    await asyncio.wait_for(waiter, 1)
    transport.pause_writing()
    waiter = asyncio.ensure_future(transport.drain())
    await asyncio.sleep(0)
    transport.connection_lost(ConnectionResetError())  # a lost peer frees its writers
    await asyncio.wait_for(waiter, 1)
    assert isinstance(receiver.lost[0], ConnectionResetError)


async def test_reading_back_pressure_is_passed_to_the_socket():
    transport, sock, _receiver = connect()
    transport.pause_reading()
    assert sock.reading_paused
    transport.resume_reading()
    assert not sock.reading_paused


async def test_writes_of_one_turn_go_out_together():
    transport, sock, _receiver = connect()
    transport.write(b"<a/>")
    transport.write(b"<b/>")
    transport.write(b"<c/>")
    assert sock.take() == b"<a/>"  # the first at once: no added latency
    assert transport.write_buffer_size() == 8  # the rest waits for the end of the turn
    await asyncio.sleep(0)
    assert sock.take() == b"<b/><c/>"
    transport.write(b"<d/>")
    assert sock.take() == b"<d/>"  # a new turn: at once again


async def test_a_big_turn_goes_out_in_pieces_and_close_or_abort_settle_what_waits():
    from presence_ha.server.net.transport import PENDING_MAX
    transport, sock, _receiver = connect()
    transport.write(b"<first/>")
    chunk = b"x" * 1000
    for _ in range(PENDING_MAX // len(chunk) + 1):
        transport.write(chunk)
    assert len(sock.take()) > PENDING_MAX and transport.write_buffer_size() < PENDING_MAX
    transport.write(b"<last/>")
    transport.close()  # what waits goes out before the close
    assert sock.take().endswith(b"<last/>") and sock.closing
    transport, sock, _receiver = connect()
    transport.write(b"<1/>")
    transport.write(b"<2/>")
    transport.abort()
    await asyncio.sleep(0)
    assert sock.take() == b"<1/>" and sock.aborted
