"""The data-access facade features reach as `ctx.store` (STYLE §4, §6).

Rules of this module:
- Features speak JIDs and stanza Elements; this facade turns them into rows of
  `db.roster`, `db.offline` and `db.presence` and back. Features never see SQLAlchemy.
- Every public method is one transaction, wrapped in `translate_errors`, so a lost
  database surfaces as `DatabaseUnavailable`. What runs per login, per broadcast or per
  message (roster and presence-record reads, pending requests, offline storage,
  presence writes) goes through the hot path (`db.hotpath`, by username, one hop);
  read-modify-write changes (subscriptions, roster edits) stay ORM transactions.
- A user is an account of the cluster's domain; a method asked about a JID that is not
  one raises `UnknownUser` (features check `user_exists` where the RFC asks them to).
- Subscription states are `Subscription` members here (the rows of `db.roster` keep
  their attribute values: converted on the way in and out, once per roster load).
- Subscription changes are read-modify-write under a row lock in one transaction: the
  caller passes a pure `change(old) -> new` (the RFC 6121 Appendix A table) and gets
  both states back, so concurrent nodes never lose an update.
- Quotas (`server.quotas`, limits from `config.QuotasConfig`) are checked in the
  transaction that would go over them: a new roster item (roster set, or a
  subscription change that needs a row) against `roster_max_items`, an item's name
  and groups against `roster_item_max_bytes`, a new pending inbound request against
  `max_pending_subscriptions`, an offline message against the message and byte caps.
  Over a limit nothing is written and `QuotaExceeded` is raised (offline: False).
  Counting costs one indexed count, and only for writes that add something.
- Stored stanzas are serialized with `server.xmpp.stanzas.serialize` (no `ns0:`
  prefixes) and parsed back with the same Clark-notation conventions.
- Hot-path reads of the presence feature (`contacts`, `subscription_of`) come from a
  per-node roster cache (`server.roster_cache`); every roster write here invalidates
  the user's entry after it committed. Presence record writes are group-committed
  (`server.presence_writes`): still awaited before the presence is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import blocklist, groups, last_activity, nodes, offline, parameters, presence, roster, users, vcards
from presence_ha.db.engine import translate_errors
from presence_ha.db.hotpath import HotPath
from presence_ha.db.roster import RosterRow
from presence_ha.server.archive_store import ArchiveStore
from presence_ha.server.config import QuotasConfig
from presence_ha.server.pep_store import PepStore
from presence_ha.server.presence_writes import GroupCommit
from presence_ha.server.quotas import MAX_STORED_REQUEST_BYTES, Quota, QuotaExceeded, check_item
from presence_ha.server.roster_cache import Roster, RosterCache
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stanzas import Subscription, serialize

__all__ = [
    "BackupProfile", "RosterRow", "Store", "StoredPresence", "SubscriptionState", "SubscriptionUpdate", "UnknownUser",
]


class UnknownUser(LookupError):
    """The JID is not an account of this cluster."""


@dataclass(frozen=True)
class SubscriptionState:
    """The user's side of one subscription (RFC 6121 Appendix A.1) plus pre-approval."""

    subscription: Subscription = Subscription.NONE
    pending_out: bool = False
    pending_in: bool = False
    approved: bool = False


@dataclass(frozen=True)
class SubscriptionUpdate:
    old: SubscriptionState
    new: SubscriptionState
    item: RosterRow | None  # the roster item after the change, if the user has one


@dataclass(frozen=True)
class StoredPresence:
    resource: str
    priority: int
    stanza: ET.Element


@dataclass(frozen=True)
class BackupProfile:
    """What a client of this node needs for dual connections (SPEC §8)."""

    ha_enabled: bool
    backup_node: str | None  # the peer of this node in its group (None: single node)
    backup_host: str | None
    backup_client_port: int | None
    relogin_lower_s: int
    relogin_upper_s: int


def _needs_row(state: SubscriptionState) -> bool:
    return state.subscription is not Subscription.NONE or state.pending_out or state.approved


_REQUEST_KEYS = ("from", "to", "type", "id")  # what a subscription request kept without its payload keeps
DEFAULT_QUOTAS = QuotasConfig()
ROSTER_CACHE_TTL_S = 30.0  # bounds staleness after another node wrote a roster (roster_cache)


class Store:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], hot: HotPath, domain: str, node_name: str | None = None,
        roster_cache_ttl_s: float = ROSTER_CACHE_TTL_S, quotas: QuotasConfig = DEFAULT_QUOTAS,
    ) -> None:
        self._sessions = sessions
        self.quotas = quotas
        self._hot = hot  # the per-broadcast writes (db.hotpath)
        self.domain = domain
        self.node_name = node_name  # recorded on presence rows this node writes
        self._rosters = RosterCache(roster_cache_ttl_s)
        self._roster_loads: dict[str, asyncio.Future[Roster]] = {}  # reads in flight, shared
        self._jids: dict[str, JID] = {}  # contact text -> JID, shared by cached rosters (bounded by the accounts)
        self._presence_writes = GroupCommit(self._write_presences)
        self.pep = PepStore(sessions, hot, domain)  # XEP-0163 nodes and items, XEP-0115 caps
        self.archive = ArchiveStore(hot, domain)  # XEP-0313 message archive

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        async with translate_errors(), self._sessions() as session, session.begin():
            yield session

    async def _uid(self, session: AsyncSession, user: JID) -> int:
        uid = None
        if user.local is not None and user.domain == self.domain:
            uid = await roster.user_id(session, self.domain, user.local)
        if uid is None:
            raise UnknownUser(str(user.bare))
        return uid

    async def _read(self, fn, user: JID, *args):
        """A hot-path operation (`db.hotpath`) on an account by username; its None (no
        such account) is `UnknownUser`."""
        if user.local is not None and user.domain == self.domain:
            found = await self._hot.run(fn, self.domain, user.local, *args)
            if found is not None:
                return found
        raise UnknownUser(str(user.bare))

    async def user_exists(self, user: JID) -> bool:
        try:
            await self._read(roster.user_id_of, user)
        except UnknownUser:
            return False
        return True

    # -- roster (RFC 6121 §2) ------------------------------------------------
    async def roster(self, user: JID) -> list[RosterRow]:
        return await self._read(roster.items_of, user)

    async def roster_item(self, user: JID, contact: JID) -> RosterRow | None:
        async with self._tx() as s:
            return await roster.get_item(s, await self._uid(s, user), str(contact.bare))

    async def set_roster_item(self, user: JID, contact: JID, name: str | None, groups: Iterable[str]) -> RosterRow:
        """Create or update the item's name and groups; its subscription is kept.
        Raises `QuotaExceeded` for an item too big or one item too many."""
        groups = tuple(groups)
        check_item(name, groups, self.quotas.roster_item_max_bytes)
        async with self._tx() as s:
            uid = await self._uid(s, user)
            old = await roster.get_item(s, uid, str(contact.bare), lock=True)
            if old is None:
                await self._check_roster_room(s, uid)
            row = dataclasses.replace(old or RosterRow(str(contact.bare)), name=name, groups=groups)
            await roster.put_item(s, uid, row)
        self._forget_roster(user)
        return row

    async def _check_roster_room(self, s: AsyncSession, uid: int) -> None:
        """Room for one more roster item of `uid`, or `QuotaExceeded`."""
        limit = self.quotas.roster_max_items
        if await roster.count_items(s, uid) >= limit:
            raise QuotaExceeded(Quota.ROSTER_ITEMS, limit)

    async def remove_roster_item(self, user: JID, contact: JID) -> SubscriptionState | None:
        """Delete the item and any pending request from the contact (RFC 6121 §2.5).

        Returns the state before removal, or None (and changes nothing) without an item.
        """
        async with self._tx() as s:
            uid = await self._uid(s, user)
            row = await roster.get_item(s, uid, str(contact.bare), lock=True)
            if row is None:
                return None
            pending_in = await roster.delete_pending(s, uid, str(contact.bare))
            await roster.delete_item(s, uid, str(contact.bare))
        self._forget_roster(user)
        return SubscriptionState(Subscription.parse(row.subscription), row.ask, pending_in, row.approved)

    async def contacts(self, user: JID, subscriptions: Iterable[Subscription]) -> list[JID]:
        """The user's contacts with one of `subscriptions`, in roster order (cached)."""
        wanted = tuple(subscriptions)  # a tuple: members compare by identity, in C (no Enum.__hash__)
        return [jid for jid, sub in (await self._cached_roster(user)).values() if sub in wanted]

    async def subscription_of(self, user: JID, contact: JID) -> Subscription | None:
        """`contact`'s subscription in `user`'s roster (cached); None: no such user."""
        try:
            entry = (await self._cached_roster(user)).get(str(contact.bare))
        except UnknownUser:
            return None
        return entry[1] if entry is not None else Subscription.NONE

    async def _cached_roster(self, user: JID) -> Roster:
        """The user's roster from the cache, or one read shared by every caller that
        misses it meanwhile (a login's probes ask twenty nodes' worth of contacts at once)."""
        key = str(user.bare)
        cached = self._rosters.get(key)
        if cached is not None:
            return cached
        pending = self._roster_loads.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._roster_loads[key] = asyncio.get_running_loop().create_future()
        ticket, loaded = self._rosters.begin_load(), None
        try:
            rows, blocked = await self._read(blocklist.roster_and_blocks_of, user)
            loaded = Roster({sys.intern(text): (self._shared_jid(text), Subscription.parse(sub)) for text, sub in rows},
                            frozenset(blocked))
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            if self._roster_loads.get(key) is pending:
                del self._roster_loads[key]
            self._rosters.finish_load(ticket, key, loaded)
        pending.set_result(loaded)
        return loaded

    def _forget_roster(self, user: JID) -> None:
        """The user's roster changed: drop the cached copy, and let the next reader start
        a fresh read rather than share one begun before the change."""
        key = str(user.bare)
        self._rosters.invalidate(key)
        self._roster_loads.pop(key, None)

    def _shared_jid(self, text: str) -> JID:
        """One JID object per contact for all cached rosters: a roster entry then costs
        a dict slot, not a parsed JID and its strings (memory per idle session)."""
        jid = self._jids.get(text)
        if jid is None:
            jid = self._jids[text] = JID.parse(text)
        return jid

    # -- block lists (XEP-0191), cached with the roster ---------------------------
    async def blocked(self, user: JID) -> frozenset[str]:
        """The user's block list (cached with its roster); empty for no such account."""
        try:
            return (await self._cached_roster(user)).blocked
        except UnknownUser:
            return frozenset()

    def blocked_now(self, user: JID) -> frozenset[str] | None:
        """The user's block list if it is cached now, else None (ask `blocked`)."""
        cached = self._rosters.get(str(user.bare))
        return cached.blocked if isinstance(cached, Roster) else None

    async def block_list(self, user: JID) -> list[str]:
        """The block list as stored, in the order the items were added."""
        async with self._tx() as s:
            return await blocklist.list_blocked(s, await self._uid(s, user))

    async def block(self, user: JID, jids: Iterable[str]) -> list[str]:
        """Add `jids`; returns those that were not blocked before."""
        async with self._tx() as s:
            added = await blocklist.block(s, await self._uid(s, user), list(jids))
        self._forget_roster(user)
        return added

    async def unblock(self, user: JID, jids: Iterable[str] | None) -> list[str]:
        """Remove `jids` (None: all); returns those that were blocked."""
        async with self._tx() as s:
            gone = await blocklist.unblock(s, await self._uid(s, user), None if jids is None else list(jids))
        self._forget_roster(user)
        return gone

    # -- vCards (XEP-0054, XEP-0153) and last activity (XEP-0012) ----------------
    async def vcard(self, user: JID) -> ET.Element | None:
        async with self._tx() as s:
            text = await vcards.get(s, await self._uid(s, user))
        return ET.fromstring(text) if text is not None else None

    async def set_vcard(self, user: JID, vcard: ET.Element) -> None:
        async with self._tx() as s:
            await vcards.put(s, await self._uid(s, user), serialize(vcard))

    async def record_logout(self, user: JID, at: dt.datetime, status: str) -> None:
        await self._read(last_activity.record_by_name, user, at, status)

    async def last_logout(self, user: JID) -> tuple[dt.datetime, str] | None:
        async with self._tx() as s:
            return await last_activity.get(s, await self._uid(s, user))

    # -- subscriptions (RFC 6121 §3) -----------------------------------------
    async def subscription(self, user: JID, contact: JID) -> SubscriptionState:
        return (await self.update_subscription(user, contact, lambda old: old)).old

    async def update_subscription(
        self,
        user: JID,
        contact: JID,
        change: Callable[[SubscriptionState], SubscriptionState],
        request: ET.Element | None = None,
    ) -> SubscriptionUpdate:
        """Apply `change` to the user's state for `contact` atomically.

        `request` is the inbound subscription request kept while `pending_in` is set
        (RFC 6121 §3.1.3: redelivered at each login until answered). Raises
        `QuotaExceeded` (nothing changes) when the change needs a new roster item or a
        new pending request and the user has no room for it.
        """
        peer = str(contact.bare)
        async with self._tx() as s:
            uid = await self._uid(s, user)
            row = await roster.get_item(s, uid, peer, lock=True)
            pending = await roster.has_pending(s, uid, peer)
            base = row or RosterRow(peer)
            old = SubscriptionState(Subscription.parse(base.subscription), base.ask, pending, base.approved)
            new = change(old)
            if new.pending_in and not old.pending_in:
                await self._put_pending(s, uid, peer, request)
            elif old.pending_in and not new.pending_in:
                await roster.delete_pending(s, uid, peer)
            if new != old and (row is not None or _needs_row(new)):
                if row is None:
                    await self._check_roster_room(s, uid)
                row = dataclasses.replace(
                    base, subscription=new.subscription.value, ask=new.pending_out, approved=new.approved)
                await roster.put_item(s, uid, row)
        if new != old:
            self._forget_roster(user)
        return SubscriptionUpdate(old, new, row)

    async def _put_pending(self, s: AsyncSession, uid: int, peer: str, request: ET.Element | None) -> None:
        limit = self.quotas.max_pending_subscriptions
        if await roster.count_pending(s, uid) >= limit:
            raise QuotaExceeded(Quota.PENDING_SUBSCRIPTIONS, limit)
        stanza = request if request is not None else ET.Element("presence", {"from": peer, "type": "subscribe"})
        text = serialize(stanza)
        if len(text.encode()) > MAX_STORED_REQUEST_BYTES:  # kept as the bare request (server.quotas)
            text = serialize(ET.Element("presence", {k: v for k, v in stanza.attrib.items() if k in _REQUEST_KEYS}))
        await roster.put_pending(s, uid, peer, text)

    async def pending_requests(self, user: JID) -> list[ET.Element]:
        return [ET.fromstring(text) for text in await self._read(roster.pending_of, user)]

    # -- offline messages (RFC 6121 §8.5.2.2) --------------------------------
    async def store_offline(self, user: JID, stanza: ET.Element) -> bool:
        """Keep `stanza` for `user`; False (nothing stored) when that would take the user
        over `quotas.offline_max_messages` or `quotas.offline_max_bytes`."""
        q = self.quotas
        return await self._read(offline.store_by_name, user, serialize(stanza), q.offline_max_messages,
                                q.offline_max_bytes)

    async def pop_offline(self, user: JID) -> list[ET.Element]:
        return [ET.fromstring(text) for text in await self._read(offline.take_by_name, user)]

    # -- presence records (shared by all nodes) ------------------------------
    async def put_presence(self, full: JID, priority: int, stanza: ET.Element) -> None:
        """Returns once the record committed (group commit: see `server.presence_writes`)."""
        await self._presence_writes.write(self._record_key(full), (priority, serialize(stanza)))

    async def delete_presence(self, full: JID) -> None:
        await self._presence_writes.write(self._record_key(full), None)

    def _record_key(self, full: JID) -> tuple[str, str]:
        if full.local is None or full.domain != self.domain:
            raise UnknownUser(str(full.bare))
        return full.local, full.resource or ""

    async def _write_presences(self, batch: dict) -> dict:
        """One operation for a batch of `(username, resource) -> (priority, stanza) | None`."""
        unknown = await self._hot.run(presence.write_batch, self.domain, self.node_name, batch)
        return {key: UnknownUser(f"{key[0]}@{self.domain}") for key in batch if key[0] in unknown}

    async def presences(self, user: JID) -> list[StoredPresence]:
        rows = await self._read(presence.list_of, user)
        return [StoredPresence(r.resource, r.priority, ET.fromstring(r.stanza)) for r in rows]

    async def presences_of(self, usernames: set[str]) -> dict[tuple[str, str], StoredPresence]:
        """`{(username, resource): record}` of many users in one read."""
        found = await self._hot.run(presence.records_of_users, self.domain, usernames) if usernames else {}
        return {(name, r.resource): StoredPresence(r.resource, r.priority, ET.fromstring(r.stanza))
                for name, rows in found.items() for r in rows}

    async def retire_orphans(self, writer: str, keep: set[tuple[str, str]]) -> list[JID]:
        """Delete, in one transaction, every record `writer` (a node taken over) wrote
        for users this node serves now, except the `(username, resource)` pairs in
        `keep`; returns the full JIDs whose records went."""
        assert self.node_name is not None  # a node's store: it serves those users now
        async with self._tx() as s:
            gone = await presence.retire_written_by(s, writer, self.node_name, keep)
        return [JID(name, self.domain, resource or None) for name, resource in gone]

    async def clear_node_presences(self) -> int:
        """Forget the records this node wrote (call at start-up: its sessions are gone)."""
        if self.node_name is None:
            return 0
        async with self._tx() as s:
            return await presence.delete_for_node(s, self.node_name)

    # -- HA dual connections (SPEC §8; features ha_backup_info, inactive_session) --
    async def active_node(self, user: JID) -> str | None:
        """The node serving `user` now; None for no such user or nobody (moving)."""
        if user.local is None or user.domain != self.domain:
            return None
        async with self._tx() as s:
            location = await users.user_location(s, user.local)
        return location[1] if location else None

    async def nodes_of(self, usernames: set[str]) -> dict[str, str | None]:
        """`{username: the node serving it now}` for many users in one read."""
        async with self._tx() as s:
            return await users.active_nodes(s, usernames)

    async def usernames_active_on(self, node: str) -> set[str]:
        return await self._hot.run(users.usernames_served_by, node)

    async def backup_profile(self) -> BackupProfile:
        """This node's backup node (its group peer), HA switch and re-login limits."""
        assert self.node_name is not None
        async with self._tx() as s:
            group = await groups.group_of_node(s, self.node_name)
            peer = await groups.peer_of(s, self.node_name)
            info = await nodes.get_node(s, peer) if peer else None
            p = await parameters.effective_parameters(s, self.node_name)
        return BackupProfile(
            bool(group and group.ha_enabled), peer, info.host if info else None,
            info.ports.client_port if info else None, int(p["relogin_lower_s"]), int(p["relogin_upper_s"]),
        )
