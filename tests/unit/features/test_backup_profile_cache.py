"""`ha_backup_info._ProfileCache`: one read per TTL, the last profile answered meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from presence_ha.server.features import ha_backup_info
from presence_ha.server.features.ha_backup_info import _ProfileCache


class Store:
    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def backup_profile(self):
        self.reads += 1
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("database gone")
        return f"profile {self.reads}"


async def test_queries_share_reads_and_get_the_last_profile_while_a_newer_one_is_read(monkeypatch):
    store, cache = Store(), _ProfileCache()
    assert await asyncio.gather(*(cache.get(store) for _ in range(20))) == ["profile 1"] * 20
    assert store.reads == 1
    monkeypatch.setattr(ha_backup_info, "PROFILE_TTL_S", 0.0)
    store.gate.clear()  # the next read hangs (a busy database)...
    assert await asyncio.wait_for(cache.get(store), 1) == "profile 1"  # ...and nobody waits for it
    assert await asyncio.wait_for(cache.get(store), 1) == "profile 1"
    assert store.reads == 2  # one read in flight, not one per query
    store.gate.set()
    await asyncio.sleep(0.01)
    assert await cache.get(store) in ("profile 2", "profile 3")


async def test_the_first_queries_wait_and_a_failure_reaches_them():
    store, cache = Store(), _ProfileCache()
    store.fail = True
    with pytest.raises(RuntimeError):
        await cache.get(store)
    store.fail = False
    assert await cache.get(store) == "profile 2"
