"""Which node serves each user right now: a cache of `users.active_node` (SPEC §2, §9).

Rules of this module:
- The database is the truth; this is a cache in front of it. A miss (or an entry
  older than `ttl_s`) is one read through the injected `load(username)`.
- Entries are forgotten wholesale when users move: on a "users moved" CONTROL from a
  peer (`forget_all`), and when the cluster's move fingerprint (the sum of the groups'
  epochs, bumped by every fenced move) changes, which `refresh` checks each
  `refresh_s`. The TTL bounds staleness for moves made outside the SRM (`user assign`).
- With a `load_all`, a move is followed by one bulk read of every user's node
  (`reload`), so the traffic right after a takeover does not queue behind one
  database read per recipient.
- A failed read raises `DatabaseUnavailable` to the caller: without the database
  nobody is routed (SPEC §9, "a node that has lost the database serves nobody").
- The clock is injected (`now`), so the cache is testable without sleeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Loader = Callable[[str], Awaitable[str | None]]
LoadAll = Callable[[], Awaitable[dict[str, str | None]]]
Fingerprint = Callable[[], Awaitable[int]]


class Miss:
    """`LocationCache.cached`: not in the cache (or too old); ask `active_node`."""


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
        self.reads = 0  # database reads, for tests and metrics

    def cached(self, username: str) -> str | None | type[Miss]:
        """The node serving `username` if the cache knows it (`Miss` if it does not):
        the routing hot path, without an awaitable per stanza."""
        entry = self._entries.get(username)
        if entry is not None and self._now() - entry.at < self.ttl_s:
            return entry.node
        return Miss

    async def active_node(self, username: str) -> str | None:
        """The node serving `username` now (None: nobody, or no such user)."""
        entry = self._entries.get(username)
        now = self._now()
        if entry is not None and now - entry.at < self.ttl_s:
            return entry.node
        node = await self._load(username)
        self.reads += 1
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # a bounded cache; the next lookups refill it
        self._entries[username] = _Entry(node, now)
        return node

    def forget(self, username: str) -> None:
        self._entries.pop(username, None)

    def forget_all(self) -> None:
        self._entries.clear()

    async def reload(self) -> None:
        """Replace every entry with a fresh read of all users (one query), when the
        cache has a `load_all`; entries read meanwhile one by one are newer and kept."""
        if self._load_all is None:
            return
        started = self._now()
        fresh = await self._load_all()
        self.reads += 1
        if len(fresh) >= self.max_entries:
            return  # too many to hold: lookups fill the cache one by one
        for username, node in fresh.items():
            entry = self._entries.get(username)
            if entry is None or entry.at < started:
                self._entries[username] = _Entry(node, started)

    async def refresh(self) -> bool:
        """Forget everything if users moved since the last call (and reload, in one
        query, when it can); True if they did."""
        current = await self._fingerprint()
        moved = self._print is not None and current != self._print
        self._print = current
        if moved:
            self.forget_all()
            await self.reload()
        return moved

    def __len__(self) -> int:
        return len(self._entries)
