"""Exactly-once delivery across a failover, the pure part: what to resend, what to drop.

Rules of this module:
- No I/O, no asyncio, no clock: the adapters (`client.dual`, `loadtest.agent`) feed
  counters and ids in and act on what comes out.
- `Unacked`: what one stream sent and its server has not acknowledged yet (XEP-0198
  §4: the server's `<a h=''/>` counts the stanzas it handled on that stream, mod 2^32).
  When the stream ends without a successful resumption, the client takes what is left
  and sends it again, with the same stanza ids, on its next active stream, as
  XEP-0198 §5 asks of a client whose resumption failed. A server may have handled a
  stanza it never acknowledged (it died between the two), so a resend can deliver a
  message twice: receivers drop the second copy with `RecentIds`.
- `RecentIds`: the stanza ids of the last `per_sender` messages delivered from each of
  the last `senders` senders (bare JIDs, least recently heard forgotten first). The
  bound that makes it exact: between the first delivery of a message m and a copy of
  it, a receiver can get from that sender only messages that were in the sender's
  `Unacked` together with m, older ones (at most `limit - 1`: m was never
  acknowledged, so whatever is younger stays buffered too) or younger ones (at most
  `limit - 1`). So `per_sender >= 2 * limit` drops every copy and never a new message,
  over any number of failovers in a row.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

SEQ_MOD = 2**32  # XEP-0198 counters wrap at 2^32
DEFAULT_LIMIT = 256  # unacknowledged messages kept per stream
DEFAULT_PER_SENDER = 2 * DEFAULT_LIMIT  # ids remembered per sender (see the module rules)
DEFAULT_SENDERS = 1024  # senders remembered by `RecentIds`


def _covered(seq: int, h: int) -> bool:
    """True if the server's count `h` covers stanza number `seq` (both mod 2^32)."""
    return (h - seq) % SEQ_MOD < SEQ_MOD // 2


class Unacked(Generic[T]):
    """What one stream sent and its server has not acknowledged, oldest first.

    `sent(seq, item)` after writing a stanza that the stream counted as number `seq`;
    `acked(h)` on the server's `<a h=''/>`: the items it covers, removed; `take()` when
    the stream is gone: everything left, removed. Past `limit` items the oldest is
    dropped and counted in `overflow` (a client that never hears an ack cannot keep
    everything; the count says how much it gave up)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.overflow = 0
        self._items: deque[tuple[int, T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def sent(self, seq: int, item: T) -> None:
        self._items.append((seq % SEQ_MOD, item))
        if len(self._items) > self.limit:
            self._items.popleft()
            self.overflow += 1

    def acked(self, h: int) -> list[T]:
        done: list[T] = []
        while self._items and _covered(self._items[0][0], h):
            done.append(self._items.popleft()[1])
        return done

    def take(self) -> list[T]:
        items = [item for _seq, item in self._items]
        self._items.clear()
        return items


class RecentIds:
    """`first(sender, stanza_id)`: True the first time, False for a copy (see the module rules).

    Memory is bounded: at most `per_sender` ids for each of `senders` senders."""

    def __init__(self, per_sender: int = DEFAULT_PER_SENDER, senders: int = DEFAULT_SENDERS) -> None:
        if per_sender < 1 or senders < 1:
            raise ValueError("per_sender and senders must be at least 1")
        self.per_sender, self.senders = per_sender, senders
        self.dropped = 0  # copies recognised
        self._seen: OrderedDict[Hashable, OrderedDict[str, None]] = OrderedDict()

    def first(self, sender: Hashable, stanza_id: str | None) -> bool:
        if not stanza_id:
            return True  # nothing to recognise a copy by
        ids = self._seen.get(sender)
        if ids is None:
            ids = self._seen[sender] = OrderedDict()
            if len(self._seen) > self.senders:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(sender)
        if stanza_id in ids:
            self.dropped += 1
            return False
        ids[stanza_id] = None
        if len(ids) > self.per_sender:
            ids.popitem(last=False)
        return True


class Outbox(Generic[T]):
    """`Unacked` by stanza id, for a stack that reports each acknowledged stanza rather
    than the counter (slixmpp's XEP-0198 plugin raises `stanza_acked` per stanza)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.overflow = 0
        self._items: OrderedDict[str, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def sent(self, stanza_id: str, item: T) -> None:
        self._items[stanza_id] = item
        self._items.move_to_end(stanza_id)
        if len(self._items) > self.limit:
            self._items.popitem(last=False)
            self.overflow += 1

    def acked(self, stanza_id: str) -> T | None:
        return self._items.pop(stanza_id, None)

    def take(self) -> list[T]:
        items = list(self._items.values())
        self._items.clear()
        return items
