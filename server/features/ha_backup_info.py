"""Backup information for clients (SPEC §8, docs/xep-presence-ha-backup.md §3).

Rules of this module:
- An IQ get `<backup xmlns='urn:presence-ha:backup:0'/>` to the server answers with
  this node's backup node: its name and client address (`<node/>`), and this node's
  Client Re-Login Lower/Upper Limits (`<relogin/>`, SPEC §5), read from the
  database at most once per `PROFILE_TTL_S` (one read shared by concurrent queries:
  after a takeover every client asks at once), so an admin change shows within it.
- With HA off for the group, or without a peer, no node is offered and the answer
  says why (`<none reason='ha-disabled'/>` / `<none reason='no-peer'/>`): the client
  opens no inactive connection, but still uses the re-login limits (single mode).
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

from server.features.inactive_session import NS_BACKUP
from server.router import IqType, Router
from server.sessions import Session

BACKUP = f"{{{NS_BACKUP}}}backup"


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
_profiles: dict[int, tuple[float, asyncio.Future]] = {}  # id(store) -> (read at, profile)


async def _profile(store):
    now = time.monotonic()
    cached = _profiles.get(id(store))
    if cached is None or now - cached[0] > PROFILE_TTL_S or (cached[1].done() and cached[1].exception()):
        cached = (now, asyncio.ensure_future(store.backup_profile()))
        _profiles[id(store)] = cached
    return await asyncio.shield(cached[1])


async def backup_info(ctx, session: Session, iq: ET.Element) -> ET.Element:
    return backup_element(await _profile(ctx.store))


def register(router: Router) -> None:
    router.iq(IqType.GET, BACKUP)(backup_info)
