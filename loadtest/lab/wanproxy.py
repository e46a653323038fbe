"""A delaying TCP proxy between the lab's hosts: WAN latency and loss without netem.

This machine's kernel has no netem, so `presence-ha loadtest failover --fault wan` puts
this proxy on the path instead.

Rules of this module:
- One proxy runs inside each node host's namespace (`python -m
  presence_ha.loadtest.lab.wanproxy`). An nftables rule there (table `ip phalabwan`,
  nat output hook) redirects every TCP connection the host opens to the other node
  host to the proxy on the host's loopback; the proxy reads the original destination
  (SO_ORIGINAL_DST), dials it itself with socket mark `WAN_MARK` (which the rule
  skips), and copies both ways. Node links, the nodes' database connections,
  streaming replication and Patroni's REST calls between h1 and h2 all pass through
  it; traffic to the witness and to the load generator does not.
- Only the dialing host's proxy sees a connection, so each direction is delayed once:
  `delay_s` per direction (0.040 s: an 80 ms round trip).
- Loss, as a TCP stream sees it: a lost segment is resent after a retransmission
  timeout, and TCP hands bytes over in order, so everything behind it waits too. The
  model: each chunk the proxy reads is, with probability `loss` (0.01), held back an
  extra `stall_s` (0.2 s, Linux's minimum RTO) and no later chunk overtakes it. Not
  modelled: lost SYNs (connection setup is never delayed beyond `delay_s`), the
  congestion window's shrinking (throughput, not latency; the lab's rates are low),
  and several losses within one RTO (each chunk draws on its own).
- `deliver_at` is the pure part (the unit tests check it); the rest is asyncio I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field

SO_ORIGINAL_DST = 80
WAN_MARK = 0x17A
WAN_TABLE = "phalabwan"
DEFAULT_PORT = 7999
CHUNK = 1 << 16


@dataclass
class WanModel:
    """Per-direction delay, and the share of chunks that stall `stall_s` more (a resend)."""

    delay_s: float = 0.040
    loss: float = 0.01
    stall_s: float = 0.200
    rng: random.Random = field(default_factory=random.Random)

    def argv(self) -> list[str]:
        return ["--delay-ms", str(round(self.delay_s * 1000)), "--loss", str(self.loss),
                "--stall-ms", str(round(self.stall_s * 1000))]

    def describe(self) -> str:
        return (f"{2 * self.delay_s * 1000:.0f} ms round trip, {100 * self.loss:g}% of chunks stalled "
                f"{self.stall_s * 1000:.0f} ms (TCP resend model), between h1 and h2")


def deliver_at(model: WanModel, now: float, previous: float) -> float:
    """When a chunk read at `now` is written on: after the delay (plus a stall on a 'loss'),
    and never before the chunk in front of it (`previous`)."""
    at = now + model.delay_s
    if model.rng.random() < model.loss:
        at += model.stall_s
    return max(at, previous)


def redirect_rules(peer_address: str, port: int) -> str:
    """The nft script sending this host's TCP connections to `peer_address` through the proxy."""
    return (
        f"table ip {WAN_TABLE}\ndelete table ip {WAN_TABLE}\n"
        f"table ip {WAN_TABLE} {{\n"
        " chain out { type nat hook output priority -100; policy accept;\n"
        f"  ip daddr {peer_address} meta mark != {WAN_MARK:#x} meta l4proto tcp redirect to :{port}\n"
        " }\n}\n"
    )


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(address), port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, model: WanModel) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        last = 0.0
        try:
            while data := await reader.read(CHUNK):
                last = deliver_at(model, loop.time(), last)
                queue.put_nowait((last, data))
        finally:
            queue.put_nowait((last, b""))  # end of stream, in order behind the last chunk

    reading = asyncio.create_task(read())
    try:
        while True:
            at, data = await queue.get()
            await asyncio.sleep(max(0.0, at - loop.time()))
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                break
            writer.write(data)
            await writer.drain()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reading


async def _dial(destination: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, WAN_MARK)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, destination), 10)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _serve_one(model: WanModel, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        destination = original_destination(client_w.get_extra_info("socket"))
        # Setting up the connection costs one delayed round trip, as on a WAN.
        await asyncio.sleep(2 * model.delay_s)
        upstream_r, upstream_w = await _dial(destination)
    except (OSError, TimeoutError):
        client_w.transport.abort()  # the far end refused or is gone: as a reset
        return
    try:
        await asyncio.gather(_pipe(client_r, upstream_w, model), _pipe(upstream_r, client_w, model))
    except OSError:
        pass
    finally:
        client_w.transport.abort()
        upstream_w.transport.abort()


async def serve(port: int, model: WanModel, host: str = "127.0.0.1") -> None:
    server = await asyncio.start_server(lambda r, w: _serve_one(model, r, w), host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Delaying TCP proxy between lab hosts (see the module docstring).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--delay-ms", type=float, default=40.0, help="Delay per direction.")
    parser.add_argument("--loss", type=float, default=0.01, help="Share of chunks held back --stall-ms more.")
    parser.add_argument("--stall-ms", type=float, default=200.0, help="Extra delay of a 'lost' chunk (a resend).")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    model = WanModel(args.delay_ms / 1000, args.loss, args.stall_ms / 1000, random.Random(args.seed))
    asyncio.run(serve(args.port, model))


if __name__ == "__main__":
    main()
