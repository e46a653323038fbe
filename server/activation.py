"""Inactive (backup) sessions turning active (SPEC §8, docs/xep-presence-ha-backup.md).

Rules of this module:
- Below the features: the inactive-session feature (a client's `<activate/>`), the
  SRM (`activate_all` for its action `ActivateInactiveSessions(owner)`) and the
  cluster's session replicas (a resumed XEP-0198 session) all turn sessions active
  through it.
- Turning active (`turn_active`) restores the session's presence from the shared
  presence records: the session is available with its last presence at once (stanzas
  for the user reach it from then on). The presence is announced afterwards
  (`announce`): the record becomes this node's, the session gets its contacts'
  presence (probes) and queued offline messages. No record (the old node ended it
  cleanly): the session stays unavailable and the client sends its own presence.
- `activate_all` activates every INACTIVE session of a user this node serves now and
  tells each with an IQ set `<activated reason='takeover'/>` push (`push_all`), then
  announces their presences (`announce_all`); the SRM runs the two passes apart.
- One failed announcement never stops the others: it is logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TYPE_CHECKING

from presence_ha.server import presence_service
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.backup import activated

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.store import StoredPresence

log = logging.getLogger(__name__)

ANNOUNCE_CONCURRENCY = 4  # presence announcements in flight after a takeover (live traffic first)
_push_ids = itertools.count(1)

RecordKey = tuple[str, str]  # (username, resource) of a shared presence record


def record_key(session: Session) -> RecordKey:
    return session.jid.local or "", session.jid.resource or ""


async def records_for(ctx: FeatureContext, sessions: list[Session]) -> dict[RecordKey, StoredPresence]:
    """The shared presence records of the users of `sessions`, in one read."""
    return await ctx.store.presences_of({s.jid.local or "" for s in sessions}) if sessions else {}


def _stored_stanza(record: StoredPresence, session: Session) -> ET.Element:
    """The stored presence as the session's own broadcast (`from` its full JID)."""
    attrs = {k: v for k, v in record.stanza.attrib.items() if k not in ("from", "to")}
    stanza = ET.Element("presence", {**attrs, "from": str(session.jid)})
    stanza.extend(list(record.stanza))
    return stanza


def turn_active(session: Session, record: StoredPresence | None) -> bool:
    """ACTIVE now, and available with its last presence if there is a record (so that
    stanzas for the user reach it at once). True if its presence is restored."""
    session.kind = SessionKind.ACTIVE
    session.blocked = None  # a list kept while it was active before may be stale now (server.blocking)
    if not session.available and record is not None:
        presence_service.resume_available(session, record.priority, _stored_stanza(record, session))
    return session.available


async def announce(ctx: FeatureContext, session: Session) -> None:
    """Announce a session `turn_active` restored (`presence_service.announce_resumed`)."""
    try:
        await presence_service.announce_resumed(ctx, session)
    except Exception:  # one failed announcement must not stop the others
        log.exception("announcing the restored presence of %s failed", session.jid)


async def activate_all(ctx: FeatureContext, owner_node: str, on_active: Callable[[], None] = lambda: None) -> int:
    """SRM `ActivateInactiveSessions(owner_node)`: activate and notify every inactive
    session of a user this node serves now. Returns how many were activated.

    Two passes, so that every client is active (and reachable) within one loop turn
    of the takeover: each session turns ACTIVE, available with its last presence, and
    gets its `<activated/>` push (two database reads in all); then `on_active()` runs
    (also if the first pass failed: the caller's stanzas must not wait for ever) and
    the presences are announced, `ANNOUNCE_CONCURRENCY` sessions at a time."""
    pushed = await push_all(ctx, owner_node, on_active)
    await announce_all(ctx, pushed)
    return len(pushed)


async def push_all(ctx: FeatureContext, owner_node: str, on_active: Callable[[], None] = lambda: None) -> list[Session]:
    """The first pass of `activate_all`: every inactive session of a user served here
    is ACTIVE and pushed `<activated/>`; then `on_active()`. Returns those sessions,
    for `announce_all` (the SRM confirms a takeover between the two passes: the peer
    may redirect its clients as soon as the sessions here are active)."""
    try:
        pushed = await _activate_now(ctx)
    finally:
        on_active()
    log.info("activated %d inactive session(s) of %s's users on %s", len(pushed), owner_node, ctx.node_name)
    return pushed


async def announce_all(ctx: FeatureContext, sessions: list[Session]) -> None:
    """The second pass: announce the restored presences, `ANNOUNCE_CONCURRENCY` at a time."""
    for i in range(0, len(sessions), ANNOUNCE_CONCURRENCY):
        await asyncio.gather(*(announce(ctx, s) for s in sessions[i:i + ANNOUNCE_CONCURRENCY]))


async def _activate_now(ctx: FeatureContext) -> list[Session]:
    served = await ctx.store.usernames_active_on(ctx.node_name)
    chosen = [s for s in ctx.sessions if s.kind is SessionKind.INACTIVE and s.jid.local in served]
    records = await records_for(ctx, chosen)
    pushed = []
    for session in chosen:
        if session.kind is not SessionKind.INACTIVE:
            continue  # the client's own <activate/> won the race
        restored = turn_active(session, records.get(record_key(session)))
        attrs = {"type": "set", "id": f"ha-activate-{next(_push_ids)}", "from": ctx.domain, "to": str(session.jid)}
        push = ET.Element("iq", attrs)
        push.append(activated(restored, "takeover"))
        session.send(push)
        pushed.append(session)
    return pushed
