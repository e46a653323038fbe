"""XEP-0198 sessions that survive their node: replicated to the backup node (adapter).

Rules of this module:
- Origin side. Every resumable session of this node is tracked (`track` when the
  client enables resumption, `untrack` when the session ends: the replica is dropped).
  Its `StreamManagement.mirror` turns each change (stanza sent, client ack, queue
  re-sent) into an entry of `server.cluster.sm_replica`; entries of one loop turn go
  to the backup node in one CONTROL `sm` frame, in order, after the STANZA frames
  routed before them on the same link.
- Persist before acknowledging (etcd: write, then send; SPEC §9 "no acknowledged
  message is lost"): before an `<a h=''/>` leaves for the client, the entry with that
  `h` and a sync request follow everything sent to the backup so far, and the answer
  waits for the backup's `sm-synced`. Syncs are shared (group commit): one round trip
  covers every session waiting at that moment. Bounded by `sync_timeout_s`; with the
  backup unreachable nothing waits (there is no second copy to make).
- While the backup is unreachable entries are not queued; when it is back (or is a
  new process) every tracked session is sent again in full first.
- A session holding more than `max_unacked` stanzas stops being replicated (logged):
  it fails over by re-login, like a client without XEP-0198.
- Backup side. `sm` entries go to the `ReplicaStore`; a sync is answered at once. A
  `<resume/>` that finds no local session looks here: it succeeds only once this
  node serves the user (its active node in the database; SPEC §9: two nodes never
  serve one user). While the origin node is still reachable it fails at once (the
  client binds anew and is sent where it belongs); while the origin is gone but the
  takeover is not committed yet it waits up to `takeover_wait_s`.
- Replicas of a gone origin expire `max_s` after it went; their unacknowledged
  messages are routed again (offline storage or another resource), as a session
  nobody resumed (XEP-0198 §5, `server.net.clients`).
- Backup side, resumption: `restore` rebuilds the session from its replica, the
  client port binds it, then its `activate` turns it active and gives its announcement.
- Settings: the `sm_replication` section of `server.config.NodeConfig`
  (`PRESENCE_HA_SM_REPLICATION=off` turns it off; `PRESENCE_HA_SM_<FIELD>` sets a
  field, e.g. `PRESENCE_HA_SM_SYNC_TIMEOUT_S=1`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server.activation import announce, record_key, records_for, turn_active
from presence_ha.server.cluster import wire
from presence_ha.server.cluster.links import LinkMesh
from presence_ha.server.cluster.sm_replica import (
    EntryOp,
    Replica,
    ReplicaError,
    ReplicaStore,
    parse_stanza,
    stanza_key,
)
from presence_ha.server.config import SmReplicationConfig
from presence_ha.server.context import FeatureContext
from presence_ha.server.link import Kind
from presence_ha.server.router import SessionClosed
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.sm import StreamManagement
from presence_ha.server.xmpp.stanzas import serialize

log = logging.getLogger(__name__)

_ACK_H = re.compile(rb"<(?:a|resumed) [^>]*\bh='(\d+)'")
DEFAULT_SETTINGS = SmReplicationConfig()


class SessionMirror:
    """The `StreamManagement.mirror` of one tracked session (server.xmpp.sm.SmMirror)."""

    __slots__ = ("jid", "owner", "reported", "rid", "sm")

    def __init__(self, owner: SmReplication, rid: str, jid: JID, sm: StreamManagement) -> None:
        self.owner, self.rid, self.jid, self.sm, self.reported = owner, rid, jid, sm, sm.inbound

    def sent(self, stanza: ET.Element) -> None:
        if self.sm.unacked_count > self.owner.settings.max_unacked:
            self.owner.overflow(self)
            return
        self.owner.queue([EntryOp.SENT, self.rid, serialize(stanza)])

    def acked(self, h: int) -> None:
        self.owner.queue([EntryOp.ACKED, self.rid, h])

    def rewound(self) -> None:
        self.owner.queue([EntryOp.REWOUND, self.rid])

    async def before_output(self, data: bytes) -> None:
        if not data.startswith((b"<a ", b"<resumed ")):  # the two ways the client learns our h
            return
        match = _ACK_H.match(data)
        if match is None or int(match.group(1)) == self.reported:
            return
        self.reported = int(match.group(1))
        self.owner.queue([EntryOp.INBOUND, self.rid, self.reported])
        await self.owner.barrier()


@dataclass(frozen=True)
class RestoredSession:
    """A session rebuilt from its replica, not bound yet (`ClientPort.resume_replica`)."""

    session: Session
    sm: StreamManagement
    presence: Any  # its last presence record (inactive_session), None if unreadable
    origin: str  # the node that held it
    owner: SmReplication

    def activate(self) -> Coroutine[Any, Any, None]:
        """Once bound: turn it active; returns its announcement (`SmReplication.activate`)."""
        return self.owner.activate(self)


class SmReplication:
    def __init__(self, ctx: FeatureContext, mesh: LinkMesh, node: str,
                 load_backup: Callable[[], Awaitable[str | None]],
                 settings: SmReplicationConfig = DEFAULT_SETTINGS,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.ctx, self.mesh, self.node = ctx, mesh, node
        self.settings, self._now, self._load_backup = settings, now, load_backup
        self.backup: str | None = None
        self.store = ReplicaStore(settings.max_unacked)
        self._tracked: dict[str, SessionMirror] = {}
        self._parked: dict[str, Session] = {}  # rid -> a hosted session whose dialled node died
        self._ending: set[asyncio.Task[None]] = set()  # parked sessions whose replica went
        self._batch: list[list[Any]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._stale = True  # the backup has not seen the tracked sessions in full
        self._sync_posted = self._sync_confirmed = 0
        self._sync_wanted = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.stats = {"frames": 0, "entries": 0, "syncs": 0, "sync_timeouts": 0}

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self._refresh_backup()
        self._task = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._release_waiters()

    async def _refresh_backup(self) -> None:
        try:
            backup = await self._load_backup() if self.settings.enabled else None
        except DatabaseUnavailable as exc:
            log.warning("cannot read the backup node: %s", exc)
            return
        if backup != self.backup:
            log.info("XEP-0198 sessions of %s are replicated to %s", self.node, backup or "no node")
            self.backup, self._stale = backup, True

    # -- origin side -----------------------------------------------------------------
    def track(self, rid: str, session: Session, sm: StreamManagement) -> None:
        if self.backup is None or rid in self._tracked:
            return
        mirror = SessionMirror(self, rid, session.jid, sm)
        sm.mirror = mirror
        self._tracked[rid] = mirror
        self._snapshot(mirror)

    def untrack(self, rid: str | None) -> None:
        mirror = self._tracked.pop(rid or "", None)
        if mirror is not None:
            mirror.sm.mirror = None
            self.queue([EntryOp.CLOSED, mirror.rid])

    def overflow(self, mirror: SessionMirror) -> None:
        log.warning("session %s holds more than %d unacknowledged stanzas: no longer replicated to %s",
                    mirror.rid, self.settings.max_unacked, self.backup)
        self.untrack(mirror.rid)

    def _snapshot(self, mirror: SessionMirror) -> None:
        sm = mirror.sm
        self.queue([EntryOp.NEW, mirror.rid, str(mirror.jid), mirror.reported, sm.acked, sm.max_resume_s])
        for stanza in sm.unacked():
            self.queue([EntryOp.SENT, mirror.rid, serialize(stanza)])

    def _channel(self):
        return self.mesh.channel(self.backup) if self.backup is not None else None

    def queue(self, entry: list[Any]) -> None:
        channel = self._channel()
        if channel is None or not channel.up:
            self._stale = True  # sent in full once the backup is back
            return
        self._batch.append(entry)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        channel = self._channel()
        if channel is None or not channel.up:
            self._batch.clear()
            self._stale = True
            self._release_waiters()
            return
        if self._stale:
            self._resend_all()
        fields: dict[str, Any] = {"e": self._batch}
        if self._sync_wanted > self._sync_posted:
            fields["sync"] = self._sync_posted = self._sync_wanted
            self.stats["syncs"] += 1
        self.stats["frames"] += 1
        self.stats["entries"] += len(self._batch)
        self._batch = []
        if not channel.post(Kind.CONTROL, wire.encode_control(wire.Op.SM, **fields)):
            self._stale = True  # the link's backlog is full: send everything again later

    def _resend_all(self) -> None:
        """The backup lost (or never had) our sessions: each in full, before the rest."""
        self._stale = False
        pending, self._batch = self._batch, []
        for mirror in list(self._tracked.values()):
            self._snapshot(mirror)
        self._batch += [e for e in pending if e[0] is not EntryOp.NEW]  # their NEW is in the snapshot

    async def barrier(self) -> None:
        """Return once the backup confirmed every frame sent to it until now."""
        channel = self._channel()
        if channel is None or not channel.up:
            return
        seq = self._sync_wanted = self._sync_posted + 1
        waiter = self._waiters.get(seq)
        if waiter is None:
            waiter = self._waiters[seq] = asyncio.get_running_loop().create_future()
        self._schedule()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.settings.sync_timeout_s)
        except TimeoutError:
            self.stats["sync_timeouts"] += 1
            log.warning("backup %s did not confirm XEP-0198 state within %.1fs",
                        self.backup, self.settings.sync_timeout_s)

    def synced(self, peer: str, seq: int) -> None:
        if peer != self.backup:
            return
        self._sync_confirmed = max(self._sync_confirmed, seq)
        for key in [k for k in self._waiters if k <= seq]:
            future = self._waiters.pop(key)
            if not future.done():
                future.set_result(None)

    def _release_waiters(self) -> None:
        for future in self._waiters.values():
            if not future.done():
                future.set_result(None)
        self._waiters.clear()

    # -- backup side -------------------------------------------------------------------
    def received(self, peer: str, fields: dict[str, Any]) -> None:
        """An `sm` frame from `peer`: apply its entries, answer its sync."""
        try:
            for dropped in self.store.apply(peer, fields.get("e", [])):
                log.warning("dropped the XEP-0198 replica of %s from %s: %s", dropped.jid, peer, dropped.reason)
        except ReplicaError as exc:
            log.warning("bad XEP-0198 replica entries from %s: %s", peer, exc)
        seq = fields.get("sync")
        channel = self.mesh.channel(peer)
        if isinstance(seq, int) and channel is not None:
            channel.post(Kind.CONTROL, wire.encode_control(wire.Op.SM_SYNCED, seq=seq))

    def peer_restarted(self, peer: str) -> None:
        """`peer` is a new process: its old sessions live only here now; ours are news to it."""
        self.store.orphan(peer, self._now(), dead=True)
        if peer == self.backup:
            self._stale = True

    def park(self, origin: str, session: Session, pending: list[ET.Element]) -> bool:
        """`session` is hosted here for a client that dialled `origin`, and `origin` is
        gone. If `origin` replicated that client's stream here, the session stays (still
        available, still routed to) and what it is sent queues in the replica, after
        `pending` (what was sent to `origin` for it and never acknowledged, less what
        `origin` had already sent to the client), until the client resumes here or the
        replica expires. False (nothing changed) without a replica."""
        rid = self.store.find(origin, session.jid)
        if rid is None:
            return False
        handled = self.store.handled(origin) if pending else set()
        for stanza in pending:
            key = stanza_key(stanza)
            if key is None or key not in handled:
                self._queue_parked(rid, stanza)
        session.send = lambda stanza, wire=None: self._queue_parked(rid, stanza)
        session.close = lambda: self._unpark(rid)
        self._parked[rid] = session
        log.info("%s: its connection through %s is gone; its stream's replica waits here for its resumption",
                 session.jid, origin)
        return True

    def _unpark(self, rid: str) -> None:
        self._parked.pop(rid, None)

    def _queue_parked(self, rid: str, stanza: ET.Element) -> None:
        replica = self.store.get(rid)
        if replica is not None:
            replica.unacked.append(serialize(stanza))
            return
        # The replica is gone (dropped for size, or its origin closed it): the session
        # ends as an unresumed one would, and the stanza is routed again (offline storage).
        session = self._parked.pop(rid, None)
        if session is not None and self.ctx.sessions.get(session.jid) is not session:
            session = None
        if session is not None:
            self.ctx.sessions.remove(session)
        task = asyncio.get_running_loop().create_task(self._end_parked(session, stanza))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_parked(self, session: Session | None, stanza: ET.Element) -> None:
        if session is not None:
            log.info("%s: its stream's replica is gone; the session ends unresumed", session.jid)
            await self.ctx.notify(SessionClosed(session, graceful=False))
        if stanza.tag == "message" and stanza.get("type") not in ("error", "groupchat"):
            try:
                await self.ctx.deliver(stanza)
            except DatabaseUnavailable as exc:
                log.warning("cannot re-route a message of %s's gone replica: %s", stanza.get("to"), exc)

    async def restore(self, previd: str, jid: JID | None, h: int) -> RestoredSession | None:
        """The replicated session `previd`, taken from the store, for the client port to
        bind; None if there is none for `jid` or this node does not serve the user (yet)."""
        replica = self.store.get(previd)
        if jid is None or replica is None or replica.jid.bare != jid.bare:
            return None
        if not await self._serving(replica):
            return None
        replica = self.store.take(previd, jid.bare)  # awaited: someone else may have taken it
        if replica is None:
            return None
        try:
            sm = replica.to_sm(previd)
        except ReplicaError as exc:
            log.warning("cannot resume %s from its replica: %s", replica.jid, exc)
            return None
        parked = self._parked.pop(previd, None)
        if parked is not None:  # until the resumed session replaces it, its stanzas queue here
            parked.send = lambda stanza, wire=None: sm.record_outbound(stanza)
        missing = sm.catch_up(h)
        if missing:
            log.info("%s got %d stanza(s) whose replica was still on the way", replica.jid, missing)
        # Until the stream says <resumed/> (SessionResumed sets send/close), stanzas
        # for the session queue as unacked, like a detached session's (server.net.clients).
        session = Session(jid=replica.jid, send=lambda stanza, wire=None: sm.record_outbound(stanza))
        try:
            presence = (await records_for(self.ctx, [session])).get(record_key(session))
        except DatabaseUnavailable as exc:
            log.warning("resuming %s without its presence record: %s", session.jid, exc)
            presence = None
        return RestoredSession(session, sm, presence, replica.origin, self)

    def activate(self, restored: RestoredSession) -> Coroutine[Any, Any, None]:
        """Once bound: as activation does (server.activation), available
        with its last presence at once; returns its announcement, to run once
        <resumed/> and the re-sent stanzas are out."""
        session, sm = restored.session, restored.sm
        turn_active(session, restored.presence)
        log.info("%s resumed on %s from %s's replica (%d unacked, h=%d)",
                 session.jid, self.node, restored.origin, sm.unacked_count, sm.inbound)
        return announce(self.ctx, session)

    async def _serving(self, replica: Replica) -> bool:
        deadline = self._now() + self.settings.takeover_wait_s
        while True:
            try:
                if await self.ctx.store.active_node(replica.jid.bare) == self.node:
                    return True
            except DatabaseUnavailable as exc:
                log.warning("cannot check who serves %s: %s", replica.jid.bare, exc)
                return False
            if self.mesh.unreachable_for(replica.origin) == 0 or self._now() >= deadline:
                log.info("resume of %s refused on %s: %s still serves it", replica.jid, self.node, replica.origin)
                return False
            await asyncio.sleep(0.05)

    # -- upkeep --------------------------------------------------------------------------
    async def _sweep(self) -> None:
        refresh_at = self._now() + self.settings.backup_refresh_s
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            if self._now() >= refresh_at:
                refresh_at = self._now() + self.settings.backup_refresh_s
                await self._refresh_backup()
            channel = self._channel()
            if channel is None or not channel.up:
                self._release_waiters()
            elif self._stale:
                self._schedule()
            await self._expire()

    async def _expire(self) -> None:
        now = self._now()
        for origin in self.store.origins():
            if self.mesh.unreachable_for(origin) > 0:
                self.store.orphan(origin, now)
            else:
                self.store.adopt(origin)
        for rid, replica in self.store.expired(now):
            parked = self._parked.pop(rid, None)
            if parked is not None and self.ctx.sessions.get(parked.jid) is parked:  # nobody resumed it
                self.ctx.sessions.remove(parked)
                await self.ctx.notify(SessionClosed(parked, graceful=False))
            log.info("replica of %s (%s) expired unresumed: re-routing %d stanza(s)",
                     replica.jid, rid, len(replica.unacked))
            await self._reroute(replica)

    async def _reroute(self, replica: Replica) -> None:
        for text in replica.unacked:
            try:
                stanza = parse_stanza(text)
            except ReplicaError:
                continue
            if stanza.tag == "message" and stanza.get("type") not in ("error", "groupchat"):
                try:
                    await self.ctx.deliver(stanza)
                except DatabaseUnavailable as exc:
                    log.warning("cannot re-route a message of %s's replica: %s", replica.jid, exc)

    def status(self) -> dict[str, Any]:
        return {"backup": self.backup, "tracked": len(self._tracked), "replicas": len(self.store), **self.stats}
