"""Micro-benchmark of the node-to-node link over loopback: frames/s and latency.

Rules: both ends run in this one process and event loop (so the figures are for one
CPU doing both sides' work); nothing here asserts on time. Run:
    .venv/bin/python -m presence_ha.loadtest.link_bench [--frames 50000] [--size 1024]
Phase 1 streams frames as fast as the send window allows and reports throughput plus
one-way latency under load (queueing included). Phase 2 sends one frame at a time and
waits for the echo: round-trip latency of an idle link.
`--tls on` runs the link as the nodes do (TLS 1.3, both sides' certificates from a
fresh cluster CA, `server.tls.link_tls`); `--tls alternate --rounds N` runs N rounds of
clear then TLS, so a noisy machine hits both alike. `--uvloop` runs on the nodes' loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from presence_ha.server.link import Kind, LinkClient, LinkConfig, LinkOptions, LinkServer
from presence_ha.server.link.secure import LinkTls
from presence_ha.server.tls import ensure_link_certificate, link_tls, make_ca

SECRET = b"benchmark-cluster-secret-000000"


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(
        samples) > 1 else samples[0]


def stamped(size: int) -> bytes:
    return time.perf_counter_ns().to_bytes(8, "big") + bytes(size - 8)


def bench_tls(directory: Path) -> tuple[LinkTls, LinkTls]:
    """(a's, b's) link TLS from a fresh cluster CA."""
    ca = make_ca("bench.test")
    a, b = (link_tls(*ensure_link_certificate(directory, name, ca), ca[0]) for name in ("a", "b"))
    return a, b


async def run(frames: int, size: int, window: int, pings: int, tls: tuple[LinkTls, LinkTls] | None = None) -> None:
    latencies: list[float] = []
    done = asyncio.Event()
    echoes: asyncio.Queue[bytes] = asyncio.Queue()

    def at_server(peer: str, kind: Kind, payload: bytes) -> None:
        if kind is Kind.CONTROL:  # phase 2: echo it back
            server.try_send(peer, Kind.CONTROL, payload)
            return
        latencies.append((time.perf_counter_ns() - int.from_bytes(payload[:8], "big")) / 1e6)
        if len(latencies) == frames:
            done.set()

    options = LinkOptions(window=window)
    server = LinkServer(LinkConfig("b", SECRET, os.urandom(16)), "127.0.0.1", 0,
                        on_frame=at_server, options=options, tls=tls[1] if tls else None)
    await server.start()
    client = LinkClient(LinkConfig("a", SECRET, os.urandom(16)), "b", "127.0.0.1", server.port,
                        on_frame=lambda _p, _k, payload: echoes.put_nowait(payload),
                        rng=random.Random(1), options=options, tls=tls[0] if tls else None)
    client.start()
    try:
        await throughput(client, frames, size, done, latencies)
        await round_trips(client, pings, size, echoes)
    finally:
        await client.close()
        await server.close()


async def throughput(client, frames, size, done, latencies) -> None:
    start = time.perf_counter()
    for _ in range(frames):
        await client.send(Kind.STANZA, stamped(size))
    await done.wait()
    elapsed = time.perf_counter() - start
    print(f"throughput: {frames} x {size} B in {elapsed:.2f} s = {frames / elapsed:,.0f} "
          f"frames/s ({frames * size / elapsed / 1e6:.1f} MB/s)")
    print(f"one-way latency under load: p50 {percentile(latencies, 50):.2f} ms, "
          f"p99 {percentile(latencies, 99):.2f} ms")


async def round_trips(client, pings, size, echoes) -> None:
    rtts = []
    for _ in range(pings):
        sent = time.perf_counter_ns()
        await client.send(Kind.CONTROL, stamped(size))
        await echoes.get()
        rtts.append((time.perf_counter_ns() - sent) / 1e6)
    print(f"idle round trip ({pings} pings): p50 {percentile(rtts, 50):.3f} ms, "
          f"p99 {percentile(rtts, 99):.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--pings", type=int, default=2_000)
    parser.add_argument("--tls", choices=("off", "on", "alternate"), default="off")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--uvloop", action="store_true", help="the nodes' event loop")
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "alternate": [False, True]}[args.tls] * args.rounds
    with tempfile.TemporaryDirectory() as directory:
        tls = bench_tls(Path(directory))
        for index, on in enumerate(modes, 1):
            print(f"--- run {index}/{len(modes)}: TLS {'on (1.3, mutual)' if on else 'off'}")
            coro = run(args.frames, args.size, args.window, args.pings, tls if on else None)
            if args.uvloop:
                import uvloop
                uvloop.run(coro)
            else:
                asyncio.run(coro)


if __name__ == "__main__":
    main()
