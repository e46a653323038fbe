"""Backup information for clients (SPEC §8, docs/xep-presence-ha-backup.md §3).

Rules of this module:
- An IQ get `<backup xmlns='urn:presence-ha:backup:0'/>` to the server answers with
  this node's backup node: its name and client address (`<node/>`), and this node's
  Client Re-Login Lower/Upper Limits (`<relogin/>`, SPEC §5), read from the
  database at most once per `PROFILE_TTL_S` (one read shared by concurrent queries,
  and the last profile answered while a newer one is read: after a takeover every
  client asks at once), so an admin change shows within about that time.
- With HA off for the group, or without a peer, no node is offered and the answer
  says why (`<none reason='ha-disabled'/>` / `<none reason='no-peer'/>`): the client
  opens no inactive connection, but still uses the re-login limits (single mode).
"""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.router import Router
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.backup import BACKUP, NS_BACKUP
from presence_ha.server.xmpp.stanzas import IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

log = logging.getLogger(__name__)


def backup_element(profile) -> ET.Element:
    """The `<backup/>` answer for a `server.store.BackupProfile`."""
    answer = ET.Element(BACKUP, {"ha": "on" if profile.ha_enabled else "off"})
    if profile.backup_node is None:
        ET.SubElement(answer, f"{{{NS_BACKUP}}}none", {"reason": "no-peer"})
    elif not profile.ha_enabled:
        ET.SubElement(answer, f"{{{NS_BACKUP}}}none", {"reason": "ha-disabled"})
    else:
        ET.SubElement(answer, f"{{{NS_BACKUP}}}node", {
            "name": profile.backup_node,
            "host": profile.backup_host,
            "port": str(profile.backup_client_port),
        })
    ET.SubElement(answer, f"{{{NS_BACKUP}}}relogin", {
        "lower": str(profile.relogin_lower_s), "upper": str(profile.relogin_upper_s),
    })
    return answer


PROFILE_TTL_S = 1.0


class _ProfileCache:
    """The node's backup profile, re-read at most once per `PROFILE_TTL_S`. Once one
    read succeeded, queries are answered at once from the last profile while a newer
    one is read: after a takeover every client asks at once, just when the database is
    busiest, and each client's next stanzas wait behind the answer on its connection.
    Only the very first queries (or those after failed reads) wait for a read."""

    def __init__(self) -> None:
        self.profile = None
        self.read_at = float("-inf")
        self.reading: asyncio.Future | None = None

    async def get(self, store):
        if self.reading is None and time.monotonic() - self.read_at > PROFILE_TTL_S:
            self.reading = asyncio.ensure_future(self._read(store))
            self.reading.add_done_callback(_log_failure)
        if self.profile is not None:
            return self.profile
        reading = self.reading
        assert reading is not None  # no read has succeeded yet, so one runs (started above if need be)
        return await asyncio.shield(reading)

    async def _read(self, store):
        try:
            profile = await store.backup_profile()
        finally:
            self.reading = None
        self.profile, self.read_at = profile, time.monotonic()
        return profile


def _log_failure(read: asyncio.Future) -> None:
    if not read.cancelled() and read.exception() is not None:
        log.warning("reading the backup profile failed: %s", read.exception())


_profiles: dict[int, _ProfileCache] = {}  # id(store) -> its cache


async def _profile(store):
    return await _profiles.setdefault(id(store), _ProfileCache()).get(store)


async def backup_info(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    return backup_element(await _profile(ctx.store))


def register(router: Router) -> None:
    router.iq(IqType.GET, BACKUP)(backup_info)
