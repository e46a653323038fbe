"""Bound client sessions of this node, as features see them.

Rules:
- A `Session` is created by the connection adapter once a resource is bound; features
  read and update its feature fields (availability, priority, last presence, roster
  interest, carbons, client state) and send to it with `send()`. They never see the
  socket.
- `SessionRegistry` is the node's only index of sessions: by full JID and by bare JID.
  It is read-only to features except through the adapter's `add`/`remove`.
- Stanzas are `xml.etree.ElementTree.Element`s: `jabber:client` elements unqualified
  (`message`, `body`), every other namespace in Clark notation (`{urn:xmpp:ping}ping`).
- `send(stanza, wire=None)`: `wire`, when given, is that stanza already serialized as
  `server.xmpp.stanzas.serialize` writes it (a routed frame's body, checked by parsing
  it): the connection writes it instead of serializing the stanza again.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from presence_ha.server.xmpp.jid import JID


class SessionKind(enum.Enum):
    ACTIVE = "active"  # a normal session: presence and traffic
    INACTIVE = "inactive"  # a backup session: bound, no traffic, no presence (SPEC §8)


@dataclass(eq=False, slots=True)  # slots: no per-session __dict__ (memory per idle session)
class Session:
    jid: JID
    send: Callable[..., None] = field(repr=False)  # send(stanza, wire: bytes | None = None)
    close: Callable[[], None] = field(repr=False, default=lambda: None)
    kind: SessionKind = SessionKind.ACTIVE
    # RFC 6121 §4.2: a session is "available" once it sent initial presence.
    available: bool = False
    priority: int = 0
    presence: ET.Element | None = None  # last broadcast available presence
    interested: bool = False  # requested the roster (RFC 6121 §2.1.6)
    roster_versioning: bool = False  # its roster get carried `ver` (RFC 6121 §2.6): pushes carry it too
    blocklist_interested: bool = False  # requested the block list (XEP-0191 §3.3: gets its pushes)
    blocked: frozenset[str] | None = None  # the user's block list, kept for the session's life (server.blocking)
    carbons: bool = False  # XEP-0280 enabled
    client_active: bool = True  # XEP-0352 state
    directed_to: set[str] = field(default_factory=set)  # directed presence targets (full JIDs)
    # Backup protocol `<hold contacts='kept'/>`: the client keeps the contacts' presence
    # it learnt on its active connection, so an activation does not probe them again.
    keeps_contacts: bool = False

    @property
    def bare(self) -> JID:
        return self.jid.bare


class SessionRegistry:
    """Sessions by full JID and by bare JID."""

    def __init__(self) -> None:
        self._by_full: dict[JID, Session] = {}
        self._by_bare: dict[JID, dict[str, Session]] = {}

    def add(self, session: Session) -> Session | None:
        """Register `session`; return the session it replaces (same full JID), if any."""
        old = self._by_full.get(session.jid)
        self._by_full[session.jid] = session
        self._by_bare.setdefault(session.bare, {})[session.jid.resource or ""] = session
        return old

    def remove(self, session: Session) -> None:
        if self._by_full.get(session.jid) is not session:
            return
        del self._by_full[session.jid]
        resources = self._by_bare.get(session.bare, {})
        resources.pop(session.jid.resource or "", None)
        if not resources:
            self._by_bare.pop(session.bare, None)

    def get(self, full: JID) -> Session | None:
        return self._by_full.get(full)

    def resources(self, bare: JID) -> list[Session]:
        """Every session of the account `bare`, active or inactive."""
        return list(self._by_bare.get(bare, {}).values())

    def only_inactive(self, bare: JID) -> bool:
        """The account has sessions here, none of them active (backup connections)."""
        sessions = self._by_bare.get(bare)
        return sessions is not None and bool(sessions) and all(
            s.kind is SessionKind.INACTIVE for s in sessions.values())

    def active(self, bare: JID) -> list[Session]:
        return [s for s in self.resources(bare) if s.kind is SessionKind.ACTIVE]

    def available(self, bare: JID) -> list[Session]:
        """Active sessions that sent initial presence (RFC 6121 §8.5.2.1)."""
        return [s for s in self.active(bare) if s.available]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_full.values()))

    def __len__(self) -> int:
        return len(self._by_full)

    def count(self, kind: SessionKind) -> int:
        return sum(1 for s in self._by_full.values() if s.kind is kind)

    def tally(self) -> SessionTally:
        """The SPEC §8 session counters in one pass over the accounts."""
        active_sessions = inactive_sessions = active_users = inactive_only_users = 0
        for resources in self._by_bare.values():
            active = sum(1 for s in resources.values() if s.kind is SessionKind.ACTIVE)
            active_sessions += active
            inactive_sessions += len(resources) - active
            if active:
                active_users += 1
            else:
                inactive_only_users += 1
        return SessionTally(active_sessions, inactive_sessions, active_users, inactive_only_users)


class SessionTally(NamedTuple):
    active_sessions: int  # JsmSessionsClient
    inactive_sessions: int  # JsmSessionsClientInactive
    active_users: int  # ActiveJsmSessions: accounts with an active session
    inactive_only_users: int  # InactiveJsmSessions: accounts with inactive sessions only
