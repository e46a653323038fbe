"""`inactive_session._Lookups`: activation requests share their reads, one batch at a time."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from presence_ha.server.features.inactive_session import _Lookups


class SlowStore:
    def __init__(self) -> None:
        self.batches: list[set[str]] = []
        self.gate = asyncio.Event()

    async def nodes_of(self, names):
        self.batches.append(set(names))
        await self.gate.wait()
        return dict.fromkeys(names, "n2")

    async def presences_of(self, names):
        return {}


async def test_requests_during_a_read_wait_for_one_next_batch():
    store = SlowStore()
    ctx = SimpleNamespace(store=store)
    lookups = _Lookups()
    first = asyncio.ensure_future(lookups.get(ctx, "u0"))
    await asyncio.sleep(lookups.WINDOW_S * 4)
    assert store.batches == [{"u0"}]  # in flight, held at the gate
    later = [asyncio.ensure_future(lookups.get(ctx, f"u{i}")) for i in range(1, 50)]
    await asyncio.sleep(lookups.WINDOW_S * 4)
    assert len(store.batches) == 1  # no second read while the first is out
    store.gate.set()
    assert await first == ("n2", {})
    assert [node for node, _ in await asyncio.gather(*later)] == ["n2"] * 49
    assert store.batches[1:] == [{f"u{i}" for i in range(1, 50)}]


async def test_a_failed_read_fails_its_waiters_and_the_next_batch_reads_again():
    calls = []

    async def nodes_of(names):
        calls.append(set(names))
        if len(calls) == 1:
            raise RuntimeError("database gone")
        return dict.fromkeys(names, "n2")

    async def presences_of(names):
        return {}

    ctx = SimpleNamespace(store=SimpleNamespace(nodes_of=nodes_of, presences_of=presences_of))
    lookups = _Lookups()
    failed = asyncio.ensure_future(lookups.get(ctx, "u0"))
    await asyncio.gather(failed, return_exceptions=True)
    assert isinstance(failed.exception(), RuntimeError)
    assert await lookups.get(ctx, "u1") == ("n2", {})
