"""Group commit of presence records: batching, last write wins, errors reach writers."""

from __future__ import annotations

import asyncio

import pytest

from presence_ha.server.presence_writes import GroupCommit


class Recorder:
    def __init__(self, refuse=(), fail: Exception | None = None) -> None:
        self.batches: list[dict] = []
        self.refuse, self.fail = set(refuse), fail

    async def __call__(self, batch: dict) -> dict:
        self.batches.append(dict(batch))
        await asyncio.sleep(0)  # the transaction yields to the loop, as a real one does
        if self.fail is not None:
            raise self.fail
        return {key: LookupError(key) for key in batch if key in self.refuse}


async def test_concurrent_writes_share_transactions_and_the_last_write_of_a_key_wins():
    flush = Recorder()
    writes = GroupCommit(flush)
    await asyncio.gather(*(writes.write(("u", str(i % 3)), i) for i in range(9)))
    assert flush.batches == [{("u", "0"): 6, ("u", "1"): 7, ("u", "2"): 8}]  # one transaction


async def test_writes_queued_during_a_flush_go_in_the_next_one_in_order():
    flush = Recorder()
    writes = GroupCommit(flush)
    first = asyncio.create_task(writes.write("a", "put"))
    await asyncio.sleep(0)  # the flusher started the first transaction
    await asyncio.gather(writes.write("a", None), writes.write("b", "put"), first)
    assert flush.batches == [{"a": "put"}, {"a": None, "b": "put"}]


async def test_a_refused_key_fails_only_its_writers():
    writes = GroupCommit(Recorder(refuse={"ghost"}))
    results = await asyncio.gather(writes.write("ghost", 1), writes.write("alice", 1), return_exceptions=True)
    assert isinstance(results[0], LookupError) and results[1] is None


async def test_a_failed_transaction_fails_every_writer_of_the_batch():
    writes = GroupCommit(Recorder(fail=ConnectionError("db down")))
    results = await asyncio.gather(writes.write("a", 1), writes.write("b", 2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_cancelled_writer_does_not_stop_the_others():
    flush = Recorder()
    writes = GroupCommit(flush)
    first = asyncio.create_task(writes.write("a", 1))
    await asyncio.sleep(0)
    first.cancel()
    await writes.write("b", 2)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert [batch.get("a") for batch in flush.batches] == [1]  # the cancelled write still stands
