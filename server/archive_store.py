"""The message archive's data access (`ctx.store.archive`, XEP-0313).

Rules of this module:
- `append` group-commits: rows from concurrent senders go to the database in one
  hot-path call (`db.archive.append_rows`), and each caller's await returns once its
  rows are written, so a message is archived before the sender's stream acknowledges
  it (the stream answers <r/> after the stanza was handled).
- Preferences are cached per node for `prefs_ttl_s` (a change made on this node is
  seen at once; one made on another node within the TTL), so the message path reads
  them at most once per user and TTL.
- Stored stanzas are serialized with `server.xmpp.stanzas.serialize` and parsed back
  with the same conventions as every stored stanza.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from presence_ha.db import archive
from presence_ha.db.archive import ArchivePage, ArchiveQuery, ArchiveRow, PrefsRow, UnknownAnchor
from presence_ha.db.hotpath import HotPath
from presence_ha.server.presence_writes import GroupCommit
from presence_ha.server.xmpp.jid import JID

__all__ = ["ArchivePage", "ArchiveQuery", "ArchiveRow", "ArchiveStore", "PrefsRow", "UnknownAnchor"]

PREFS_TTL_S = 30.0


@dataclass(frozen=True)
class Pending:
    username: str
    row: ArchiveRow


class ArchiveStore:
    def __init__(self, hot: HotPath, domain: str, prefs_ttl_s: float = PREFS_TTL_S) -> None:
        self._hot, self.domain, self._ttl = hot, domain, prefs_ttl_s
        self._prefs: dict[str, tuple[float, PrefsRow]] = {}
        self._writes = GroupCommit(self._flush)

    def _name(self, user: JID) -> str | None:
        return user.local if user.local is not None and user.domain == self.domain else None

    async def append(self, user: JID, row: ArchiveRow) -> None:
        """Archive `row` for `user` (nothing for a JID that is no account of ours)."""
        name = self._name(user)
        if name is not None:
            await self._writes.write((name, row.stanza_id), row)

    async def _flush(self, batch: dict) -> dict:
        await self._hot.run(archive.append_rows, self.domain, [(name, row) for (name, _sid), row in batch.items()])
        return {}

    async def page(self, user: JID, query: ArchiveQuery) -> ArchivePage | None:
        """One page (`db.archive.page_of`); raises `UnknownAnchor`."""
        name = self._name(user)
        return None if name is None else await self._hot.run(archive.page_of, self.domain, name, query)

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


def parse_stored(text: str) -> ET.Element:
    return ET.fromstring(text)
