"""What the SRM does to client sessions when users change nodes (SPEC §8).

Rules of this module:
- A manual failover or fallback demotes the users' sessions first (`demote`: no
  traffic, connections open) and lets them go only once the peer serves them (make
  before break, issue #18).
- Letting users go (`let_go`): their sessions here are demoted, then closed with
  the redirect to the peer. A demoted session's end announces no unavailable:
  the user moves on with its presence, which the peer restores (activation, or a
  login with the same resource) or retires after the grace.
- Taking users (`activate`): the inactive sessions of the users now served here are
  activated by the server (`server.activation.push_all`), their presences announced
  afterwards in a task (`announce_all`).
- After any move, the presences the previous node wrote for the moved users are
  retired after `grace_s` if their resource did not come back (`schedule_retire`);
  one pending retirement per previous node, restarted by a newer move.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server import activation, presence_service
from presence_ha.server.context import FeatureContext
from presence_ha.server.services import HANDOVER_CLOSE_S
from presence_ha.server.sessions import Session, SessionKind
from presence_ha.server.xmpp.errors import StreamError
from presence_ha.server.xmpp.jid import JID

log = logging.getLogger(__name__)

class HandoverPort(Protocol):
    """What the handover uses of the client port (`server.net.clients.ClientPort`)."""

    @property
    def ctx(self) -> FeatureContext: ...

    async def close_sessions(self, chosen: Callable[[Session], bool], error_for: Callable[[str], StreamError | None],
                             timeout_s: float, *, handover: bool = False) -> int: ...


Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]  # runs a task the SRM cancels when it stops


class Handover:
    def __init__(self, node: str, clients: HandoverPort, spawn: Spawn) -> None:
        self.node, self._clients, self._spawn = node, clients, spawn
        self._retiring: dict[str, asyncio.Task[None]] = {}  # previous node -> its pending retirement
        self._demoted: dict[int, Session] = {}  # id -> session demoted until the peer serves its user

    async def let_go(self, names: set[str], error: StreamError) -> int:
        """Close the ACTIVE sessions of `names`, and those `demote` demoted, with
        `error`, demoted first (backup sessions held here stay)."""
        demoted, self._demoted = self._demoted, {}
        return await self._clients.close_sessions(
            lambda s: (s.kind is SessionKind.ACTIVE or id(s) in demoted) and s.jid.local in names,
            lambda _u: error, HANDOVER_CLOSE_S, handover=True)

    def demote(self, names: set[str]) -> int:
        """Make before break: the ACTIVE sessions of `names` here turn INACTIVE, their
        connections open. Nothing reaches them any more (stanzas for the users wait in
        offline storage, or reach the peer once it serves them) and their end, once the
        peer serves the users (`let_go`, or the services stopping), announces no
        unavailable. Returns how many were demoted."""
        chosen = [s for s in self._clients.ctx.sessions if s.kind is SessionKind.ACTIVE and s.jid.local in names]
        for session in chosen:
            session.kind = SessionKind.INACTIVE
        self._demoted = {id(s): s for s in chosen}  # for `let_go` (the latest demotion only)
        return len(chosen)

    def demoted_users(self, names: set[str]) -> set[str]:
        """Those of `names` that have a session `demote` demoted (not yet let go)."""
        return {s.jid.local or "" for s in self._demoted.values() if s.jid.local in names}

    async def forward_queued(self, names: set[str]) -> int:
        """The offline messages of `names` (demoted here, served by the peer now) are
        delivered again: a message stored here while the users were demoted, after the
        peer had handed their queue to the activated sessions, would otherwise wait for
        the users' next login. Call once routing follows the move. Returns how many."""
        ctx, forwarded = self._clients.ctx, 0
        for name in sorted(names):
            try:
                stanzas = await ctx.store.pop_offline(JID(name, ctx.domain))
            except DatabaseUnavailable as exc:
                log.warning("srm %s: cannot hand over the queued messages of %s: %s", self.node, name, exc)
                continue
            for stanza in stanzas:
                await ctx.deliver(stanza)
                forwarded += 1
        return forwarded

    async def activate(self, owner: str, on_active: Callable[[], None]) -> int:
        """Activate the inactive sessions of `owner`'s users served here; `on_active()`
        once they are active, even if it fails. Returns once every session is active
        and pushed; their presences are announced in a task of their own (the SRM
        confirms the move meanwhile: the peer redirects its clients only once this
        node serves them, and need not wait for a thousand announcements)."""
        pushed = await activation.push_all(self._clients.ctx, owner, on_active)
        if pushed:
            self._spawn(activation.announce_all(self._clients.ctx, pushed))
        return len(pushed)

    def schedule_retire(self, previous: str, grace_s: float) -> None:
        old = self._retiring.pop(previous, None)
        if old is not None:
            old.cancel()
        self._retiring[previous] = self._spawn(self._retire(previous, grace_s))

    async def _retire(self, previous: str, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        try:
            retired = await presence_service.retire_orphans(self._clients.ctx, previous)
        except DatabaseUnavailable as exc:
            log.warning("srm %s: cannot retire the presences of %s's users: %s", self.node, previous, exc)
            return
        log.info("srm %s: %d presence(s) of %s's users not back after %ss announced unavailable",
                 self.node, retired, previous, grace_s)
