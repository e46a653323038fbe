"""Which node serves each user right now: a cache of `users.active_node` (SPEC §2, §9).

Rules of this module:
- The database is the truth; this is a cache in front of it. A miss (or an entry
  older than `ttl_s`) is one read through the injected `load(username)`; lookups of
  one user that miss together share that read.
- Entries are forgotten wholesale when users move: on a "users moved" CONTROL from a
  peer (`forget_all`), and when the cluster's move fingerprint (the sum of the groups'
  epochs, bumped by every fenced move) changes, which `refresh` checks each
  `refresh_s`. The TTL bounds staleness for moves made outside the SRM (`user assign`).
- With a `load_all`, a move is followed by one bulk read of every user's node
  (`reload`; lookups that miss while it runs wait for it instead of reading one by
  one, so the traffic right after a takeover does not queue behind one database read
  per recipient), and `refresh` re-reads everything in one query every `ttl_s / 2`:
  entries are renewed before they expire, and a node serving 10,000 users makes one
  read every few seconds, not one per user and TTL.
- A failed read raises `DatabaseUnavailable` to the caller: without the database
  nobody is routed (SPEC §9, "a node that has lost the database serves nobody").
- The clock is injected (`now`), so the cache is testable without sleeping.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

Loader = Callable[[str], Awaitable[str | None]]
LoadAll = Callable[[], Awaitable[dict[str, str | None]]]
Fingerprint = Callable[[], Awaitable[int]]


class Miss(enum.Enum):
    """`LocationCache.cached`: not in the cache (or too old); ask `active_node`."""

    MISS = enum.auto()


MISS: Final = Miss.MISS


@dataclass(slots=True)
class _Entry:
    node: str | None
    at: float


class LocationCache:
    def __init__(self, load: Loader, fingerprint: Fingerprint, now: Callable[[], float],
                 ttl_s: float = 10.0, max_entries: int = 200_000, load_all: LoadAll | None = None) -> None:
        self._load, self._fingerprint, self._now, self._load_all = load, fingerprint, now, load_all
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, _Entry] = {}
        self._print: int | None = None
        self._loading: dict[str, asyncio.Future[str | None]] = {}  # one read per user at a time
        self._reloading: asyncio.Future[None] | None = None  # the bulk read in flight
        self._reloading_generation = 0
        self._generation = 0  # bumped by every forget: reads begun before it are stale
        self._reloaded_at: float | None = None
        self.reads = 0  # database reads, for tests and metrics

    def cached(self, username: str) -> str | Literal[Miss.MISS] | None:
        """The node serving `username` if the cache knows it (`MISS` if it does not):
        the routing hot path, without an awaitable per stanza."""
        entry = self._entries.get(username)
        if entry is not None and self._now() - entry.at < self.ttl_s:
            return entry.node
        return MISS

    async def active_node(self, username: str) -> str | None:
        """The node serving `username` now (None: nobody, or no such user)."""
        node = self.cached(username)
        if node is not MISS:
            return node
        while self._reloading is not None:  # a bulk read may be superseded by a newer one
            reloading = self._reloading
            try:
                await asyncio.shield(reloading)
            except Exception:  # noqa: BLE001 - the bulk read failed: read this one user below
                break
            node = self.cached(username)
            if node is not MISS:
                return node
            if self._reloading is reloading:
                break
        pending = self._loading.get(username)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._loading[username] = asyncio.get_running_loop().create_future()
        started, generation = self._now(), self._generation
        try:
            node = await self._load(username)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        finally:
            del self._loading[username]
        self.reads += 1
        if generation == self._generation:  # else the user may have moved during the read
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # a bounded cache; the next lookups refill it
            self._entries[username] = _Entry(node, started)
        pending.set_result(node)
        return node

    def forget(self, username: str) -> None:
        self._entries.pop(username, None)

    async def read_fresh(self, username: str) -> str | None:
        """The node serving `username` read from the database now, whatever is cached
        or in flight (and cached: a bulk read begun earlier does not overwrite it)."""
        started = self._now()
        node = await self._load(username)
        self.reads += 1
        self._entries[username] = _Entry(node, started)
        return node

    def forget_all(self) -> None:
        self._entries.clear()
        self._generation += 1

    def reload_soon(self) -> asyncio.Future[None] | None:
        """Start a bulk `reload` now (or join the one in flight); lookups that miss
        meanwhile wait for it. None without a `load_all`."""
        load_all = self._load_all
        if load_all is None:
            return None
        if self._reloading is None or self._reloading_generation != self._generation:
            self._reloading_generation = self._generation  # a read begun before a forget is stale
            self._reloading = asyncio.ensure_future(self._reload(load_all, self._generation))
            self._reloading.add_done_callback(self._reload_done)
        return self._reloading

    def _reload_done(self, future: asyncio.Future[None]) -> None:
        if self._reloading is future:
            self._reloading = None
        if not future.cancelled():
            future.exception()  # retrieved here; the awaiting callers see it too

    async def reload(self) -> None:
        """Replace every entry with a fresh read of all users (one query), when the
        cache has a `load_all`; entries read meanwhile one by one are newer and kept."""
        future = self.reload_soon()
        if future is not None:
            await asyncio.shield(future)

    async def _reload(self, load_all: LoadAll, generation: int) -> None:
        started = self._now()
        fresh = await load_all()
        self.reads += 1
        if generation != self._generation:
            return  # users moved (or were forgotten) during the read: a newer reload follows
        self._reloaded_at = started
        if len(fresh) >= self.max_entries:
            return  # too many to hold: lookups fill the cache one by one
        for username, node in fresh.items():
            entry = self._entries.get(username)
            if entry is None or entry.at <= started:
                self._entries[username] = _Entry(node, started)

    async def refresh(self) -> bool:
        """Forget everything if users moved since the last call (and reload, in one
        query, when it can); True if they did. Otherwise renew every entry in one
        query once they are half their TTL old."""
        current = await self._fingerprint()
        moved = self._print is not None and current != self._print
        self._print = current
        if moved:
            self.forget_all()
            await self.reload()
        elif self._load_all is not None and (self._reloaded_at is None
                                             or self._now() - self._reloaded_at >= self.ttl_s / 2):
            await self.reload()
        return moved

    def __len__(self) -> int:
        return len(self._entries)
