"""Per-node cache of each user's subscriptions (RFC 6121 §2), for the presence hot path.

Why: every presence broadcast asked the database for the user's contacts, and every
probe for one subscription; with rosters of 20 that saturated the node at 210 users
(profiling, SQLite and TLS). Rosters change rarely, so the node keeps them in memory.

Rules of this module:
- An entry maps a user's bare JID text to `{contact text: (contact JID, subscription)}`
  in roster order. It is dropped (`invalidate`) by every roster write this node makes
  for that user (`server.store.Store` calls it after the write committed).
- A load that was in flight while the user's roster was invalidated is not kept (it
  may have read the old rows): loads take a ticket before reading, and `finish_load`
  keeps the result only if no invalidation of that user came after the ticket.
- Writes by another node (a user served elsewhere, a peer handling a stanza while
  the links were down) are not seen here: an entry lives at most `ttl_s`, which bounds
  that staleness. In normal operation every write for a user is made by the node
  serving it (stanzas for a user are routed there), so the cache is exact.
- An entry also carries the user's block list (XEP-0191, `Roster.blocked`): it is
  read with the subscriptions in one statement (`db.blocklist`), so the blocking
  checks of every stanza cost no query, and a block-list write invalidates the entry
  like a roster write. Its staleness across nodes is the roster's (above).
- The clock is injected, so tests need no wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import Subscription


class Roster(dict[str, tuple[JID, Subscription]]):
    """contact text -> (contact JID, subscription), in roster order; `blocked`: the
    user's block list (XEP-0191 items as text)."""

    __slots__ = ("blocked",)

    def __init__(self, items: dict[str, tuple[JID, Subscription]], blocked: frozenset[str] = frozenset()) -> None:
        super().__init__(items)
        self.blocked = blocked

SWEEP_EVERY = 1024  # loads between sweeps of expired entries (keeps memory bounded)


class RosterCache:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s, self._clock = ttl_s, clock
        self._entries: dict[str, tuple[float, Roster]] = {}  # user -> (expiry, roster)
        self._changed: dict[str, int] = {}  # user -> ticket of its last invalidation (loads in flight)
        self._ticket = 0
        self._loading = 0
        self._loads = 0

    def get(self, user: str) -> Roster | None:
        entry = self._entries.get(user)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[user]
            return None
        return entry[1]

    def begin_load(self) -> int:
        """A ticket for a load about to read the database."""
        self._loading += 1
        self._ticket += 1
        return self._ticket

    def finish_load(self, ticket: int, user: str, roster: Roster | None) -> None:
        """End the load of `ticket`; keep `roster` (None: the load failed) if still current."""
        self._loading -= 1
        if roster is not None and self._changed.get(user, 0) < ticket:
            self._entries[user] = (self._clock() + self._ttl_s, roster)
        if self._loading == 0:
            self._changed.clear()  # no load in flight: no ticket can be older than a change
        self._loads += 1
        if self._loads % SWEEP_EVERY == 0:
            self._sweep()

    def invalidate(self, user: str) -> None:
        self._entries.pop(user, None)
        if self._loading:
            self._ticket += 1
            self._changed[user] = self._ticket

    def _sweep(self) -> None:
        now = self._clock()
        for user in [u for u, (expiry, _) in self._entries.items() if expiry <= now]:
            del self._entries[user]
