"""Inactive (backup) sessions and their activation (SPEC §8, docs/xep-presence-ha-backup.md).

Rules of this module:
- An INACTIVE session is bound on the user's backup node (the connection adapter
  admits it there: `server.auth.Accounts.backs_up`). It gets no traffic and shows no
  presence: presence and message features only ever deliver to ACTIVE sessions.
- `<hold/>` (IQ set) is the first stanza of a backup connection: it confirms the
  session stays inactive. On a session of a user this node serves it is refused with
  `not-allowed` + `<served-here/>`: the client uses that connection as its active one.
  On an ACTIVE session of a user served elsewhere now (the client moved on: make
  before break) it demotes the session, so closing it announces no unavailable.
- `<activate/>` (IQ set) turns the session ACTIVE, but only once this node serves the
  user (its active node in the database is this node); before that the answer is
  `unexpected-request` (type wait) + `<not-serving-yet/>`: retry shortly. Idempotent.
- Activating restores the session's presence from the shared presence records: the
  session is available with its last presence at once (stanzas for the user reach it
  from then on), and after the answer (or push) is on the stream the presence is
  announced as initial presence is: the record becomes this node's, its contacts get
  it, the session gets its contacts' presence (probes) and queued offline messages
  (`SessionAvailable`). No record (the old node ended it cleanly): the answer says
  `presence='none'` and the client sends its own.
- `activate_all(ctx, owner_node)` is the server-side activation the SRM runs for its
  action `ActivateInactiveSessions(owner)`: every INACTIVE session of a user this
  node now serves is activated and told so with an IQ set `<activated/>` push.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable

from presence_ha.server.features import presence
from presence_ha.server.router import IqType, Router
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.store import StoredPresence
from presence_ha.server.xmpp.errors import Condition, ErrorType, StanzaError

log = logging.getLogger(__name__)

NS_BACKUP = "urn:presence-ha:backup:0"
HOLD = f"{{{NS_BACKUP}}}hold"
ACTIVATE = f"{{{NS_BACKUP}}}activate"
ACTIVATED = f"{{{NS_BACKUP}}}activated"
_push_ids = itertools.count(1)
_announcing: set[asyncio.Task[None]] = set()
ANNOUNCE_CONCURRENCY = 4  # presence announcements in flight after a takeover (live traffic first)


class BackupError(StanzaError):
    """A stanza error with an application-specific condition of NS_BACKUP (RFC 6120 §8.3.2)."""

    def __init__(self, condition: Condition, app_condition: str, text: str, type: ErrorType | None = None) -> None:
        super().__init__(condition, text, type)
        self.app_condition = app_condition

    def to_element(self) -> ET.Element:
        error = super().to_element()
        ET.SubElement(error, f"{{{NS_BACKUP}}}{self.app_condition}")
        return error


def is_hold_request(stanza: ET.Element) -> bool:
    """The stanza a backup connection must send first (checked by the connection adapter)."""
    return stanza.tag == "iq" and stanza.get("type") == "set" and len(stanza) == 1 and stanza[0].tag == HOLD


def activated(presence_restored: bool, reason: str | None = None) -> ET.Element:
    payload = ET.Element(ACTIVATED, {"presence": "restored" if presence_restored else "none"})
    if reason:
        payload.set("reason", reason)
    return payload


async def hold(ctx, session: Session, iq: ET.Element) -> None:
    """Keep (or, for an old active session of a moved user, make) the session inactive."""
    if session.kind is SessionKind.ACTIVE:
        if await ctx.store.active_node(session.bare) == ctx.node_name:
            raise BackupError(Condition.NOT_ALLOWED, "served-here",
                              f"{ctx.node_name} serves {session.bare}: this session is active")
        session.kind = SessionKind.INACTIVE  # demoted: its end will not announce unavailable
    session.keeps_contacts = iq[0].get("contacts") == "kept"
    log.info("%s holds an inactive session on %s", session.jid, ctx.node_name)


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
    if not session.available and record is not None:
        presence.resume_available(session, record.priority, _stored_stanza(record, session))
    return session.available


async def announce(ctx, session: Session) -> None:
    try:
        await presence.announce_resumed(ctx, session)
    except Exception:  # one failed announcement must not stop the others
        log.exception("announcing the restored presence of %s failed", session.jid)


async def records_for(ctx, sessions: list[Session]) -> dict[tuple[str, str], StoredPresence]:
    return await ctx.store.presences_of({s.jid.local for s in sessions}) if sessions else {}


def record_key(session: Session) -> tuple[str, str]:
    return session.jid.local, session.jid.resource or ""


class _Lookups:
    """Activation requests arriving together share their database reads: after a
    takeover every client of the dead node asks at once. Requests within `WINDOW_S`
    are answered by one read of the users' nodes and one of their presence records,
    and one batch is read at a time: what arrives meanwhile waits for the next one
    (thousands of small concurrent reads would queue for the database's connections
    and answer every client late)."""

    WINDOW_S = 0.005

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._result: asyncio.Future | None = None
        self._reading: asyncio.Task | None = None  # the one batch read in flight

    async def get(self, ctx, username: str) -> tuple[str | None, dict[tuple[str, str], StoredPresence]]:
        if self._result is None:
            self._result = asyncio.get_running_loop().create_future()
            if self._reading is None:
                asyncio.get_running_loop().call_later(self.WINDOW_S, self._start_read, ctx)
        self._names.add(username)
        nodes, records = await asyncio.shield(self._result)
        return nodes.get(username), records

    def _start_read(self, ctx) -> None:
        if self._reading is not None or self._result is None:
            return
        self._reading = asyncio.ensure_future(self._read(ctx))
        self._reading.add_done_callback(lambda _t: self._read_done(ctx))

    def _read_done(self, ctx) -> None:
        self._reading = None
        if self._result is not None:  # requests arrived during the read: the next batch
            asyncio.get_running_loop().call_later(self.WINDOW_S, self._start_read, ctx)

    async def _read(self, ctx) -> None:
        names, result = self._names, self._result
        self._names, self._result = set(), None
        try:
            result.set_result((await ctx.store.nodes_of(names), await ctx.store.presences_of(names)))
        except asyncio.CancelledError:  # shutdown: the waiters end too
            result.cancel()
            raise
        except Exception as exc:  # every waiter gets the failure (DatabaseUnavailable...)
            result.set_exception(exc)


_lookups: dict[int, _Lookups] = {}


async def activate(ctx, session: Session, iq: ET.Element) -> ET.Element:
    if session.kind is SessionKind.ACTIVE:
        # Idempotent, and no database read: the takeover's push made it active while
        # the client asked. After a takeover thousands of clients ask at once, and what
        # each sends next waits behind this answer on its connection.
        return activated(session.available, "client")
    lookups = _lookups.setdefault(id(ctx), _Lookups())
    served_by, records = await lookups.get(ctx, session.jid.local)
    if served_by != ctx.node_name:
        where = f"by {served_by}" if served_by else "by no node (moving)"
        raise BackupError(Condition.UNEXPECTED_REQUEST, "not-serving-yet",
                          f"{session.bare} is served {where}, not {ctx.node_name} yet; retry", ErrorType.WAIT)
    if session.kind is SessionKind.ACTIVE:
        return activated(session.available, "client")  # pushed while we read
    record = records.get(record_key(session))
    # No await from here until the router sends the result: nothing reaches the session
    # between its turning active and the answer that says so; the announcement follows.
    restored = turn_active(session, record)
    task = asyncio.get_running_loop().create_task(announce(ctx, session))
    _announcing.add(task)
    task.add_done_callback(_announcing.discard)
    log.info("%s activated by the client on %s (presence %s)", session.jid, ctx.node_name, restored)
    return activated(restored, "client")


async def activate_all(ctx, owner_node: str, on_active: Callable[[], None] = lambda: None) -> int:
    """SRM `ActivateInactiveSessions(owner_node)`: activate and notify every inactive
    session of a user this node serves now. Returns how many were activated.

    Two passes, so that every client is active (and reachable) within one loop turn
    of the takeover: each session turns ACTIVE, available with its last presence, and
    gets its `<activated/>` push (two database reads in all); then `on_active()` runs
    (also if the first pass failed: the caller's stanzas must not wait for ever) and
    the presences are announced, `ANNOUNCE_CONCURRENCY` sessions at a time."""
    try:
        pushed = await _activate_now(ctx)
    finally:
        on_active()
    log.info("activated %d inactive session(s) of %s's users on %s", len(pushed), owner_node, ctx.node_name)
    for i in range(0, len(pushed), ANNOUNCE_CONCURRENCY):
        await asyncio.gather(*(announce(ctx, s) for s in pushed[i:i + ANNOUNCE_CONCURRENCY]))
    return len(pushed)


async def _activate_now(ctx) -> list[Session]:
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


def register(router: Router) -> None:
    router.iq(IqType.SET, HOLD)(hold)
    router.iq(IqType.SET, ACTIVATE)(activate)
    router.disco_features.add(NS_BACKUP)
