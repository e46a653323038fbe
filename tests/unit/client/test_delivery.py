"""`client.delivery`: the unacknowledged buffers (XEP-0198) and the receivers' duplicate filter."""

from __future__ import annotations

import random

import pytest

from presence_ha.client.delivery import SEQ_MOD, Outbox, RecentIds, Unacked


def test_acks_release_in_order_what_they_cover() -> None:
    box: Unacked[str] = Unacked()
    for seq, item in ((3, "a"), (5, "b"), (6, "c")):
        box.sent(seq, item)
    assert box.acked(2) == []
    assert box.acked(5) == ["a", "b"]
    assert box.acked(5) == [] and len(box) == 1
    assert box.take() == ["c"] and box.take() == [] and len(box) == 0


def test_counters_wrap_at_two_to_the_32() -> None:
    box: Unacked[str] = Unacked()
    box.sent(SEQ_MOD - 1, "last")
    box.sent(SEQ_MOD, "wrapped")  # counted as 0
    box.sent(SEQ_MOD + 1, "one")
    assert box.acked(SEQ_MOD - 2) == []
    assert box.acked(0) == ["last", "wrapped"]
    assert box.acked(1) == ["one"]


def test_an_old_ack_releases_nothing_new() -> None:
    box: Unacked[int] = Unacked()
    box.sent(10, 10)
    assert box.acked(9) == [] and box.acked(3) == [] and len(box) == 1


def test_the_oldest_is_dropped_past_the_limit_and_counted() -> None:
    box: Unacked[int] = Unacked(limit=3)
    for seq in range(1, 6):
        box.sent(seq, seq)
    assert box.overflow == 2 and box.take() == [3, 4, 5]


def test_outbox_by_stanza_id() -> None:
    box: Outbox[str] = Outbox(limit=2)
    box.sent("x", "first")
    box.sent("y", "second")
    assert box.acked("x") == "first" and box.acked("x") is None and box.acked("nope") is None
    box.sent("z", "third")
    box.sent("w", "fourth")
    assert box.overflow == 1 and box.take() == ["third", "fourth"] and len(box) == 0


@pytest.mark.parametrize("limit", [0, -1])
def test_limits_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Unacked(limit)
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(limit)
    with pytest.raises(ValueError, match="at least 1"):
        RecentIds(per_sender=limit)


def test_a_copy_is_recognised_per_sender() -> None:
    seen = RecentIds()
    assert seen.first("alice@x", "m1") and seen.first("bob@x", "m1")  # same id, other sender
    assert not seen.first("alice@x", "m1") and seen.dropped == 1
    assert seen.first("alice@x", None) and seen.first("alice@x", None)  # no id: always new
    assert seen.dropped == 1


def test_memory_per_sender_and_senders_is_bounded() -> None:
    seen = RecentIds(per_sender=3, senders=2)
    for i in range(4):
        assert seen.first("a", f"m{i}")
    assert seen.first("a", "m0")  # forgotten: only the last 3 ids are kept
    assert not seen.first("a", "m3")
    seen.first("b", "x")
    seen.first("a", "m9")  # a heard last: b is the least recent sender
    seen.first("c", "y")  # evicts b
    assert not seen.first("a", "m9") and seen.first("b", "x")  # a remembered, b forgotten


@pytest.mark.parametrize("seed", range(40))
def test_copies_from_any_run_of_failovers_are_always_recognised(seed: int) -> None:
    """The module's bound: with `per_sender = 2 * limit` every copy is dropped and no
    new message, however the deliveries, acks and failovers interleave."""
    rng = random.Random(seed)
    limit = 8
    box: Unacked[str] = Unacked(limit)
    seen = RecentIds(per_sender=2 * limit)
    delivered: list[str] = []
    arrived: set[str] = set()

    def deliver(msg_id: str) -> None:
        arrived.add(msg_id)
        if seen.first("s", msg_id):
            delivered.append(msg_id)

    seq = 0
    for n in range(200):
        msg_id = f"m{n}"
        seq += 1
        box.sent(seq, msg_id)
        if rng.random() < 0.7:
            deliver(msg_id)  # the server routed it (acknowledged or not)
        if rng.random() < 0.3:
            box.acked(seq - rng.randrange(0, len(box) + 1))
        if rng.random() < 0.1:  # the node dies: resend on a new stream
            pending = box.take()
            for seq, item in enumerate(pending, 1):
                deliver(item)
                box.sent(seq, item)
            seq = len(pending)
    assert len(delivered) == len(set(delivered))  # no copy reached the application
    assert set(delivered) == arrived  # and every message reached it once
    assert seen.dropped > 0  # copies did arrive
