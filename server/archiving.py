"""Archiving of one-to-one messages as they are sent (XEP-0313 §5, XEP-0359).

Rules of this module:
- The sender's node archives both sides of a message a local client sends: an
  outgoing row in the sender's archive and an incoming row in the recipient's (when
  the recipient is an account of ours), each as the owner's preferences say
  (`mam_forms.should_archive`). The database is shared, so no node needs to archive
  twice and a message for a user on another node, or offline, is archived all the same.
- The recipient's row id is put into the message as <stanza-id by='recipient'/>
  before it is delivered, so every device, now or from the archive later, sees the
  same id. <stanza-id/> elements a client put in, claiming to be by an account of
  ours or the domain, are removed first (XEP-0359 §5: they could be forged).
- A database that is away never stops a message: it is delivered unarchived, without
  a <stanza-id/> (`write`).
- `prepare` decides and stamps; the caller awaits `write`, then delivers, so the rows
  are committed before anyone sees the message (a reply is archived after what it
  answers, whichever node archives each) and before the stream acknowledges it (its
  <a/> answers after the stanza is handled). Writes are group-committed with other
  senders'.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import secrets
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.db.archive import ArchiveRow
from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server.mam_forms import NS_SID, archivable, should_archive
from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.stanzas import Subscription, serialize

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.sessions import Session

log = logging.getLogger(__name__)

STANZA_ID = f"{{{NS_SID}}}stanza-id"
ALL_SUBSCRIPTIONS = tuple(Subscription)  # on the roster, whatever the subscription
Planned = list[tuple[JID, ArchiveRow]]


async def _wants(ctx: FeatureContext, owner: JID, peer: JID) -> bool:
    prefs = ctx.store.archive.cached_prefs(owner) or await ctx.store.archive.prefs(owner)
    if prefs is None:
        return False
    on_roster = prefs.default == "roster" and peer in await ctx.store.contacts(owner, ALL_SUBSCRIPTIONS)
    return should_archive(prefs, str(peer), on_roster)


def _strip_forged(ctx: FeatureContext, stanza: ET.Element) -> None:
    for claimed in stanza.findall(STANZA_ID):
        by = claimed.get("by", "")
        if by == ctx.domain or by.endswith(f"@{ctx.domain}"):
            stanza.remove(claimed)


async def prepare(ctx: FeatureContext, session: Session, stanza: ET.Element) -> Planned:
    """The archive rows of a message `session` sends (its `to` set); stamps the
    recipient's <stanza-id/> on `stanza`. Empty: nothing to archive."""
    if not archivable(stanza):
        return []
    try:
        to = JID.parse(stanza.get("to", "")).bare
    except InvalidJid:
        return []
    if stanza.find(STANZA_ID) is not None:
        _strip_forged(ctx, stanza)
    sender, stamp = session.bare, dt.datetime.now(dt.UTC)
    try:
        incoming = (to.domain == ctx.domain and to.local is not None and to != sender
                    and await _wants(ctx, to, sender))
        outgoing = await _wants(ctx, sender, to)
    except DatabaseUnavailable as exc:
        log.warning("message from %s not archived: preferences unreadable: %s", sender, exc)
        return []
    if incoming:
        recipient_id = _ids.new()
        ET.SubElement(stanza, STANZA_ID, {"by": str(to), "id": recipient_id})
    text = serialize(stanza)
    planned: Planned = []
    if outgoing:
        planned.append((sender, ArchiveRow(_ids.new(), str(to), True, stamp, text)))
    if incoming:
        planned.append((to, ArchiveRow(recipient_id, str(sender), False, stamp, text)))
    return planned


async def write(ctx: FeatureContext, stanza: ET.Element, planned: Planned) -> None:
    """Commit the rows (group commit with other senders). A database that is away (a
    PostgreSQL promotion) costs the archive the message, not the message its delivery
    (SPEC §10: a database failover is not a node failover): it goes without the
    <stanza-id/>, which would name no archived message."""
    try:
        await ctx.store.archive.append(planned)
    except DatabaseUnavailable as exc:
        log.warning("message from %s delivered but not archived: %s", stanza.get("from"), exc)
        for claimed in stanza.findall(STANZA_ID):
            stanza.remove(claimed)


class _Ids:
    """Archive ids: unique (a random prefix per process, then a counter) and cheap (a
    `uuid4` per message costs a system call: a tenth of a message's CPU here)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._next = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._next):x}"


_ids = _Ids()
