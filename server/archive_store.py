"""The message archive's data access (`ctx.store.archive`, XEP-0313).

Rules of this module:
- `append` group-commits: rows from concurrent senders go to the database in one
  hot-path call (`db.archive.append_rows`), and each caller's await returns once its
  rows are written, so a message is archived before the sender's stream acknowledges
  it (the stream answers <r/> after the stanza was handled). A batch waits
  `LINGER_S` for company unless `MAX_BATCH` rows are queued: a SQLite commit costs as
  much as a dozen rows, and one per message doubled a node's CPU per message.
- Preferences are cached per node for `prefs_ttl_s` (a change made on this node is
  seen at once; one made on another node within the TTL), so the message path reads
  them at most once per user and TTL.
- Stored stanzas are serialized with `server.xmpp.stanzas.serialize` and parsed back
  with the same conventions as every stored stanza.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from presence_ha.db import archive
from presence_ha.db.archive import ArchivePage, ArchiveQuery, ArchiveRow, PrefsRow, UnknownAnchor
from presence_ha.db.hotpath import HotPath
from presence_ha.server.xmpp.jid import JID

__all__ = ["ArchivePage", "ArchiveQuery", "ArchiveRow", "ArchiveStore", "PrefsRow", "UnknownAnchor"]

PREFS_TTL_S = 30.0
LINGER_S = 0.002  # how long a batch waits for more rows (adds at most this to a message's latency)
MAX_BATCH = 256  # rows that are flushed at once, without lingering


class ArchiveStore:
    def __init__(self, hot: HotPath, domain: str, prefs_ttl_s: float = PREFS_TTL_S) -> None:
        self._hot, self.domain, self._ttl = hot, domain, prefs_ttl_s
        self._prefs: dict[str, tuple[float, PrefsRow]] = {}
        self._writes = _Batcher(self._flush)

    def _name(self, user: JID) -> str | None:
        return user.local if user.local is not None and user.domain == self.domain else None

    async def append(self, rows: list[tuple[JID, ArchiveRow]]) -> None:
        """Archive each `(owner, row)` (nothing for a JID that is no account of ours)."""
        named = [(name, row) for name, row in ((self._name(owner), row) for owner, row in rows) if name is not None]
        if named:
            await self._writes.write(named)

    async def _flush(self, rows: list[tuple[str, ArchiveRow]]) -> None:
        await self._hot.run(archive.append_rows, self.domain, rows)

    async def page(self, user: JID, query: ArchiveQuery) -> ArchivePage | None:
        """One page (`db.archive.page_of`); raises `UnknownAnchor`."""
        name = self._name(user)
        return None if name is None else await self._hot.run(archive.page_of, self.domain, name, query)

    def cached_prefs(self, user: JID) -> PrefsRow | None:
        """The preferences if this node read them within the TTL (no await: the message path)."""
        cached = self._prefs.get(user.local) if user.local is not None and user.domain == self.domain else None
        return cached[1] if cached is not None and cached[0] > time.monotonic() else None

    async def prefs(self, user: JID) -> PrefsRow | None:
        name = self._name(user)
        if name is None:
            return None
        cached = self._prefs.get(name)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._hot.run(archive.prefs_of, self.domain, name)
        if found is not None:
            if len(self._prefs) > 100_000:
                self._prefs.clear()
            self._prefs[name] = (now + self._ttl, found)
        return found

    async def set_prefs(self, user: JID, prefs: PrefsRow) -> bool:
        name = self._name(user)
        if name is None or not await self._hot.run(archive.set_prefs, self.domain, name, prefs):
            return False
        self._prefs[name] = (time.monotonic() + self._ttl, prefs)
        return True


class _Batcher:
    """One flusher at a time; writers wait for the flush that carried their rows."""

    def __init__(self, flush: Callable[[list[tuple[str, ArchiveRow]]], Awaitable[None]]) -> None:
        self._flush = flush
        self._rows: list[tuple[str, ArchiveRow]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def write(self, rows: list[tuple[str, ArchiveRow]]) -> None:
        self._rows.extend(rows)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await waiter

    async def _run(self) -> None:
        while self._rows:
            if len(self._rows) < MAX_BATCH:
                await asyncio.sleep(LINGER_S)
            rows, self._rows = self._rows, []
            waiters, self._waiters = self._waiters, []
            try:
                await self._flush(rows)
            except asyncio.CancelledError:  # node shutdown: nobody waits for ever
                for waiter in waiters:
                    waiter.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to each writer, as if it had written alone
                _settle(waiters, exc)
            else:
                _settle(waiters, None)


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)
