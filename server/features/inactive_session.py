"""Inactive (backup) sessions: `<hold/>` and `<activate/>` (SPEC §8, docs/xep-presence-ha-backup.md).

Rules of this module:
- An INACTIVE session is bound on the user's backup node (the connection adapter
  admits it there: `server.auth.Accounts.backs_up`). It gets no traffic and shows no
  presence: presence and message delivery only ever target ACTIVE sessions.
- `<hold/>` (IQ set) is the first stanza of a backup connection: it confirms the
  session stays inactive. On a session of a user this node serves it is refused with
  `not-allowed` + `<served-here/>`: the client uses that connection as its active one.
  On an ACTIVE session of a user served elsewhere now (the client moved on: make
  before break) it demotes the session, so closing it announces no unavailable.
- `<activate/>` (IQ set) turns the session ACTIVE (`server.activation`), but only once
  this node serves the user (its active node in the database is this node); before
  that the answer is `unexpected-request` (type wait) + `<not-serving-yet/>`: retry
  shortly. Idempotent. The answer says whether the presence was restored
  (`presence='restored'`, else `'none'`: the client sends its own); the presence is
  announced after the answer is on the stream.
- The server-side activation after a takeover is the SRM's (`server.activation.activate_all`).
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.activation import announce, record_key, turn_active
from presence_ha.server.router import Router
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.backup import ACTIVATE, HOLD, NS_BACKUP, BackupError, activated
from presence_ha.server.xmpp.errors import Condition, ErrorType
from presence_ha.server.xmpp.stanzas import IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.store import StoredPresence

log = logging.getLogger(__name__)

_announcing: set[asyncio.Task[None]] = set()


async def hold(ctx: FeatureContext, session: Session, iq: ET.Element) -> None:
    """Keep (or, for an old active session of a moved user, make) the session inactive."""
    if session.kind is SessionKind.ACTIVE:
        if await ctx.store.active_node(session.bare) == ctx.node_name:
            raise BackupError(Condition.NOT_ALLOWED, "served-here",
                              f"{ctx.node_name} serves {session.bare}: this session is active")
        session.kind = SessionKind.INACTIVE  # demoted: its end will not announce unavailable
    session.keeps_contacts = iq[0].get("contacts") == "kept"
    log.info("%s holds an inactive session on %s", session.jid, ctx.node_name)


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
        if result is None:
            return  # only `_start_read` starts a read, and only with requests waiting
        try:
            result.set_result((await ctx.store.nodes_of(names), await ctx.store.presences_of(names)))
        except asyncio.CancelledError:  # shutdown: the waiters end too
            result.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - not swallowed: every waiter gets the failure (DatabaseUnavailable...)
            result.set_exception(exc)


_lookups: dict[int, _Lookups] = {}


def _turned_active(session: Session) -> bool:
    """Whether the takeover's push made `session` active meanwhile: a fresh read after
    an await, which a check of `session.kind` before the await cannot rule out."""
    return session.kind is SessionKind.ACTIVE


async def activate(ctx: FeatureContext, session: Session, iq: ET.Element) -> ET.Element:
    if session.kind is SessionKind.ACTIVE:
        # Idempotent, and no database read: the takeover's push made it active while
        # the client asked. After a takeover thousands of clients ask at once, and what
        # each sends next waits behind this answer on its connection.
        return activated(session.available, "client")
    lookups = _lookups.setdefault(id(ctx), _Lookups())
    served_by, records = await lookups.get(ctx, session.jid.local or "")
    if served_by != ctx.node_name:
        where = f"by {served_by}" if served_by else "by no node (moving)"
        raise BackupError(Condition.UNEXPECTED_REQUEST, "not-serving-yet",
                          f"{session.bare} is served {where}, not {ctx.node_name} yet; retry", ErrorType.WAIT)
    if _turned_active(session):
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


def register(router: Router) -> None:
    router.iq(IqType.SET, HOLD)(hold)
    router.iq(IqType.SET, ACTIVATE)(activate)
    router.disco_features.add(NS_BACKUP)
