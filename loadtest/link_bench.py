"""Micro-benchmark of the node-to-node link over loopback: frames/s and latency.

Rules: both ends run in this one process and event loop (so the figures are for one
CPU doing both sides' work); nothing here asserts on time. Run:
    .venv/bin/python -m presence_ha.loadtest.link_bench [--frames 50000] [--size 1024]
Phase 1 streams frames as fast as the send window allows and reports throughput plus
one-way latency under load (queueing included). Phase 2 sends one frame at a time and
waits for the echo: round-trip latency of an idle link.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time

from presence_ha.server.link import Kind, LinkClient, LinkConfig, LinkOptions, LinkServer

SECRET = b"benchmark-cluster-secret-000000"


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(
        samples) > 1 else samples[0]


def stamped(size: int) -> bytes:
    return time.perf_counter_ns().to_bytes(8, "big") + bytes(size - 8)


async def run(frames: int, size: int, window: int, pings: int) -> None:
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
                        on_frame=at_server, options=options)
    await server.start()
    client = LinkClient(LinkConfig("a", SECRET, os.urandom(16)), "b", "127.0.0.1", server.port,
                        on_frame=lambda _p, _k, payload: echoes.put_nowait(payload),
                        rng=random.Random(1), options=options)
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
    args = parser.parse_args()
    asyncio.run(run(args.frames, args.size, args.window, args.pings))


if __name__ == "__main__":
    main()
