"""Node-to-node link over real loopback sockets, with faults injected by a TCP proxy.

Rules: free ports only (port 0), waits poll with a deadline, every endpoint and proxy
is closed by a fixture finalizer. Deadlines are generous; the only timing claim made is
"refused is reported long before the dead-link timeout could fire".
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import random
import ssl
from dataclasses import replace

import pytest

from presence_ha.server.link import (
    Kind,
    LinkClient,
    LinkConfig,
    LinkOptions,
    LinkRejected,
    LinkServer,
    LinkUp,
    PeerClosed,
    PeerRefused,
    PeerRestarted,
    PeerSilent,
)
from presence_ha.server.link.endpoint import DECODE_SLICE
from presence_ha.server.link.status import LinkCrashed

from .faultproxy import FaultProxy

SECRET = b"integration-cluster-secret-0001"
FAST = LinkOptions(window=256, heartbeat_interval_s=0.1, dead_after_s=3.0,
                   handshake_timeout_s=3.0, connect_timeout_s=3.0,
                   backoff_initial_s=0.02, backoff_max_s=0.2)


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple[str, Kind, bytes]] = []
        self.ups: list = []
        self.downs: list = []

    def on_frame(self, peer: str, kind: Kind, payload: bytes) -> None:
        self.frames.append((peer, kind, payload))

    def payloads(self, kind: Kind = Kind.STANZA) -> list[bytes]:
        return [p for _, k, p in self.frames if k is kind]

    def downs_of(self, cls) -> list:
        return [d for d in self.downs if isinstance(d, cls)]


async def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def config(name: str, secret: bytes = SECRET, session: bytes | None = None) -> LinkConfig:
    return LinkConfig(name, secret, session or os.urandom(16))


@pytest.fixture
async def endpoints():
    """Collects started LinkServer/LinkClient objects and closes them all afterwards."""
    made: list = []
    yield made
    for endpoint in reversed(made):
        await endpoint.close()


@pytest.fixture
def proxies():
    made: list[FaultProxy] = []

    def start(port: int) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", port).start()
        made.append(proxy)
        return proxy

    yield start
    for proxy in made:
        proxy.close()


async def start_server(endpoints, name="b", options=FAST, port=0, **kw):
    rec = Recorder()
    server = LinkServer(kw.pop("config", None) or config(name), "127.0.0.1", port,
                        on_frame=rec.on_frame, on_up=rec.ups.append,
                        on_down=rec.downs.append, options=options, **kw)
    await server.start()
    endpoints.append(server)
    return server, rec


def start_client(endpoints, port, name="a", peer="b", options=FAST, secret=SECRET, **kw):
    rec = Recorder()
    client = LinkClient(config(name, secret), peer, "127.0.0.1", port, on_frame=rec.on_frame,
                        on_up=rec.ups.append, on_down=rec.downs.append, options=options,
                        rng=random.Random(42), **kw)
    client.start()
    endpoints.append(client)
    return client, rec


def numbered(prefix: str, n: int, size: int = 200) -> list[bytes]:
    return [f"{prefix}{i:05d}|".encode().ljust(size, b".") for i in range(n)]


async def test_ten_thousand_frames_each_way_survive_three_cuts(endpoints, proxies):
    server, srec = await start_server(endpoints)
    proxy = proxies(server.port)
    client, crec = start_client(endpoints, proxy.port)
    to_b, to_a = numbered("a", 10_000), numbered("b", 10_000)

    async def pump(send, frames):
        for frame in frames:
            await send(frame)

    senders = [asyncio.create_task(pump(lambda m: client.send(Kind.STANZA, m), to_b)),
               asyncio.create_task(pump(lambda m: server.send("a", Kind.STANZA, m), to_a))]
    for threshold in (2_500, 5_000, 7_500):
        await wait_until(lambda threshold=threshold: len(srec.frames) >= threshold, f"{threshold} frames")
        assert not senders[0].done(), "the cut must happen mid-stream"
        ups, downs = len(crec.ups), len(crec.downs)
        proxy.cut()
        await wait_until(lambda downs=downs: len(crec.downs) > downs, "the client to notice the cut")
        proxy.heal()
        await wait_until(lambda ups=ups: len(crec.ups) > ups, "the link to come back")
    await asyncio.gather(*senders)
    await wait_until(lambda: len(srec.frames) == len(crec.frames) == 10_000, "all frames")
    assert srec.payloads() == to_b  # every frame exactly once, in order
    assert crec.payloads() == to_a
    assert {peer for peer, _, _ in srec.frames} == {"a"}
    assert len(crec.ups) == 4 and all(isinstance(u, LinkUp) for u in crec.ups)
    assert crec.downs_of(LinkRejected) == [] == srec.downs_of(LinkRejected)
    assert proxy.connections_accepted >= 4
    await wait_until(lambda: client.in_flight == 0 == server.in_flight("a"), "final acks")


async def test_replies_sent_from_the_frame_callback_keep_the_link_up(endpoints):
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    rec = Recorder()
    server = LinkServer(config("b"), "127.0.0.1", 0, options=FAST, on_down=rec.downs.append,
                        on_frame=lambda peer, kind, p: server.try_send(peer, kind, p + b"!"))
    await server.start()
    endpoints.append(server)
    client = LinkClient(config("a"), "b", "127.0.0.1", server.port, options=FAST,
                        rng=random.Random(1), on_up=rec.ups.append, on_down=rec.downs.append,
                        on_frame=lambda _peer, _kind, p: replies.put_nowait(p))
    client.start()
    endpoints.append(client)
    for i in range(300):
        await client.send(Kind.CONTROL, b"q%d" % i)
        assert await asyncio.wait_for(replies.get(), 10) == b"q%d!" % i
    assert rec.downs == [] and len(rec.ups) == 1  # no reconnect was needed


async def test_wrong_secret_is_rejected_on_both_sides(endpoints):
    server, srec = await start_server(endpoints)
    _, crec = start_client(endpoints, server.port, secret=b"some-other-cluster-secret!!")
    await wait_until(lambda: crec.downs_of(LinkRejected) and srec.downs_of(LinkRejected),
                     "both sides to reject")
    assert "wrong cluster secret" in crec.downs_of(LinkRejected)[0].reason
    assert "peer reported" in srec.downs_of(LinkRejected)[0].reason
    assert crec.ups == [] and srec.ups == [] and srec.frames == []


async def test_wrong_peer_name_is_rejected(endpoints):
    server, _ = await start_server(endpoints, name="c")
    _, crec = start_client(endpoints, server.port, peer="b")
    await wait_until(lambda: crec.downs_of(LinkRejected), "the client to reject")
    assert "expected peer 'b', got 'c'" in crec.downs_of(LinkRejected)[0].reason


async def test_back_pressure_bounds_the_queue(endpoints, proxies):
    server, srec = await start_server(endpoints)
    proxy = proxies(server.port)
    proxy.cut()  # the peer is unreachable: nothing can be acked
    window = 8
    client, crec = start_client(endpoints, proxy.port,
                                options=replace(FAST, window=window))
    for i in range(window):
        assert client.try_send(Kind.STANZA, b"m%d" % i)
    assert client.try_send(Kind.STANZA, b"overflow") is False
    assert client.in_flight == window
    blocked = asyncio.create_task(client.send(Kind.STANZA, b"m8"))
    await wait_until(lambda: len(crec.downs_of(PeerRefused)) >= 3, "a few refused dials")
    assert not blocked.done() and client.in_flight == window
    proxy.heal()
    await asyncio.wait_for(blocked, 20)
    await wait_until(lambda: len(srec.frames) == window + 1, "the queued frames")
    assert srec.payloads() == [b"m%d" % i for i in range(window + 1)]  # no b"overflow"
    assert server.try_send("nobody", Kind.CONTROL, b"x")  # a server queues per peer too
    assert server.in_flight("nobody") == 1


async def test_killed_listener_is_reported_as_refused_quickly(endpoints):
    slow_death = replace(FAST, dead_after_s=60.0)
    server, _ = await start_server(endpoints, options=slow_death)
    client, crec = start_client(endpoints, server.port, options=slow_death)
    await wait_until(lambda: client.is_up, "the link")
    await server.close()  # the peer process is gone: its port refuses
    await wait_until(lambda: crec.downs_of(PeerRefused), "PeerRefused", timeout=10)
    assert isinstance(crec.downs[0], PeerClosed)  # the live connection ended first
    assert crec.downs_of(PeerSilent) == []


async def test_blackholed_peer_is_reported_as_silent_after_the_timeout(endpoints, proxies):
    quick = replace(FAST, dead_after_s=0.5, handshake_timeout_s=0.5)
    server, srec = await start_server(endpoints, options=quick)
    proxy = proxies(server.port)
    client, crec = start_client(endpoints, proxy.port, options=quick)
    await wait_until(lambda: client.is_up, "the link")
    loop = asyncio.get_running_loop()
    silenced_at = loop.time()
    proxy.blackhole()
    await wait_until(lambda: crec.downs, "the client to notice")
    assert isinstance(crec.downs[0], PeerSilent)
    # Not before the dead-link timeout, counted from the last byte received (a keepalive
    # at most one heartbeat interval before the blackhole). A lower bound cannot flake.
    assert loop.time() - silenced_at >= quick.dead_after_s - quick.heartbeat_interval_s
    lost_a = lambda: [d for d in srec.downs if d.peer_name == "a"]  # noqa: E731
    await wait_until(lost_a, "the server to notice too")
    assert isinstance(lost_a()[0], PeerSilent)
    assert crec.downs_of(PeerRefused) == []
    proxy.heal()
    await wait_until(lambda: len(crec.ups) == 2, "the link to come back")


async def test_a_connection_that_never_says_hello_is_dropped_after_the_handshake_timeout(endpoints):
    quick = replace(FAST, handshake_timeout_s=0.3)
    server, srec = await start_server(endpoints, options=quick)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    opened = loop.time()
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server hung up
        assert loop.time() - opened >= quick.handshake_timeout_s
    finally:
        writer.close()
    await wait_until(lambda: srec.downs_of(PeerSilent), "the server's report")
    assert "no handshake" in srec.downs_of(PeerSilent)[0].detail


async def test_work_a_frame_started_runs_before_the_rest_of_a_big_read_is_decoded(endpoints):
    """A read holding many slices of frames whose callbacks start work: the loop turns
    between slices, so that work runs before later frames are decoded (and queued)."""
    await _slices_scenario(endpoints)


def test_slices_over_tls_on_uvloop(tmp_path):
    """The nodes' loop (uvloop) and a TLS transport: reading pauses and resumes there too."""
    import uvloop

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        made: list = []
        try:
            await _slices_scenario(made, server_kw={"ssl": server_ctx},
                                   client_kw={"ssl": client_ctx, "server_hostname": "b.cluster.test"})
        finally:
            for endpoint in reversed(made):
                await endpoint.close()

    uvloop.run(scenario())


async def _slices_scenario(endpoints, server_kw=None, client_kw=None) -> None:
    order: list[str] = []

    def on_frame(_peer: str, _kind: Kind, payload: bytes) -> asyncio.Future:
        order.append("frame")
        work = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(lambda: (order.append("work"), work.set_result(None)))
        return work

    server = LinkServer(config("b"), "127.0.0.1", 0, options=FAST, on_frame=on_frame, **(server_kw or {}))
    await server.start()
    endpoints.append(server)
    client, _ = start_client(endpoints, server.port, **(client_kw or {}))
    await wait_until(lambda: client.is_up, "the link")
    frames = numbered("x", 200, size=4 * DECODE_SLICE // 50)  # about 16 slices' worth
    for frame in frames:
        assert client.try_send(Kind.STANZA, frame)  # one loop turn: written as one
    await wait_until(lambda: order.count("work") == len(frames), "every frame's work")
    per_slice = DECODE_SLICE // len(frames[0]) + 1
    assert order.index("work") <= per_slice, "the first slice's work ran before the next slice was decoded"
    await wait_until(lambda: client.in_flight == 0, "acks: each once its work was done")


async def test_a_callback_that_raises_resets_the_connection_and_the_link_recovers(endpoints):
    seen: list[bytes] = []

    def on_frame(_peer: str, _kind: Kind, payload: bytes) -> None:
        seen.append(payload)
        if payload == b"boom":
            raise RuntimeError("a bug in a frame callback")

    rec = Recorder()
    server = LinkServer(config("b"), "127.0.0.1", 0, options=FAST, on_frame=on_frame, on_down=rec.downs.append)
    await server.start()
    endpoints.append(server)
    client, crec = start_client(endpoints, server.port)
    await wait_until(lambda: client.is_up, "the link")
    await client.send(Kind.STANZA, b"boom")
    await wait_until(lambda: rec.downs_of(LinkCrashed), "the crash report")
    await client.send(Kind.STANZA, b"after")
    await wait_until(lambda: b"after" in seen, "the next frame, on a new connection")
    assert len(crec.ups) >= 2


async def test_restarted_peer_process_is_reported(endpoints):
    server, _ = await start_server(endpoints)
    port = server.port
    client, crec = start_client(endpoints, port)
    await wait_until(lambda: client.is_up, "the link")
    await server.close()
    await client.send(Kind.STANZA, b"sent while b is down")
    _reborn, rrec = await start_server(endpoints, port=port)  # same name, new session id
    await wait_until(lambda: len(crec.ups) == 2, "the link to the new process")
    assert isinstance(crec.ups[0], LinkUp) and isinstance(crec.ups[1], PeerRestarted)
    assert isinstance(rrec.ups[0], LinkUp)  # for the new b, "a" is a first contact
    await wait_until(lambda: rrec.frames, "the frame queued while b was down")
    assert rrec.payloads() == [b"sent while b is down"]


async def test_heartbeats_are_delivered_but_never_queued(endpoints):
    server, srec = await start_server(endpoints)
    client, crec = start_client(endpoints, server.port)
    assert client.send_heartbeat(b"early") is False  # not connected yet
    await wait_until(lambda: client.is_up and "a" in server.peers_up, "the link")
    assert client.send_heartbeat(b"srm state: normal")
    assert server.send_heartbeat("a", b"srm state: backup")
    await wait_until(lambda: srec.frames and crec.frames, "heartbeats")
    assert srec.frames == [("a", Kind.HEARTBEAT, b"srm state: normal")]
    assert crec.frames == [("b", Kind.HEARTBEAT, b"srm state: backup")]
    assert client.in_flight == 0
    with pytest.raises(ValueError, match="heartbeats are unreliable"):
        client.try_send(Kind.HEARTBEAT, b"not this way")


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b.cluster.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("b.cluster.test"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "b.pem", tmp_path / "b.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_link_over_tls(endpoints, tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    server, srec = await start_server(endpoints, ssl=server_ctx)
    client, _ = start_client(endpoints, server.port, ssl=client_ctx,
                             server_hostname="b.cluster.test")
    await client.send(Kind.CONTROL, b"over tls")
    await wait_until(lambda: srec.frames, "the frame")
    assert srec.frames == [("a", Kind.CONTROL, b"over tls")]


async def test_tls_with_an_untrusted_certificate_is_rejected(endpoints, tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server, srec = await start_server(endpoints, ssl=server_ctx)
    _, crec = start_client(endpoints, server.port, ssl=ssl.create_default_context(),
                           server_hostname="b.cluster.test")
    await wait_until(lambda: crec.downs_of(LinkRejected), "the TLS failure")
    assert "TLS" in crec.downs_of(LinkRejected)[0].reason
    assert srec.ups == []


def test_a_frame_sent_after_the_peer_hung_up_waits_for_the_next_connection():
    """uvloop refuses writes on a closed transport (asyncio ignores them): a frame sent
    in the gap between the connection closing and its down report must not raise into
    the sender (a stanza handler); it stays unacknowledged and goes out again on the
    next connection."""
    import uvloop

    async def scenario() -> None:
        made: list = []
        try:
            server, srec = await start_server(made)
            client, crec = start_client(made, server.port)
            await wait_until(lambda: client.is_up, "the link")
            assert client.try_send(Kind.STANZA, b"before")
            await wait_until(lambda: srec.payloads() == [b"before"], "the first frame")
            ups = len(crec.ups)
            conn = client._current["b"]
            conn.transport.abort()
            await asyncio.sleep(0)  # the handle is closed now
            assert client._current.get("b") is conn  # and its down report not processed yet
            assert client.try_send(Kind.STANZA, b"in the gap")  # queued for retransmission
            await client.send(Kind.STANZA, b"after")
            await wait_until(lambda: len(crec.ups) > ups, "the link to come back")
            await wait_until(lambda: srec.payloads() == [b"before", b"in the gap", b"after"], "the frames")
        finally:
            for endpoint in reversed(made):
                await endpoint.close()

    uvloop.run(scenario())
