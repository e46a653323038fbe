"""Replicas of other nodes' XEP-0198 sessions, held by their backup node (pure).

Rules of this module:
- No I/O, no clock, no asyncio: entries in (`apply`), facts out; time comes in as
  arguments (`orphan`, `expired`).
- A node that holds a resumable session streams its state to the user's backup node
  as compact entries, in order, inside CONTROL `sm` frames (`server.cluster.wire`):
      [NEW, rid, jid, inbound, acked, max_s]  a new (or re-sent) session, empty queue
      [SENT, rid, xml]                         one stanza sent to the client
      [ACKED, rid, h]                          the client acknowledged up to h
      [INBOUND, rid, h]                        the h the node reported to the client
      [REWOUND, rid]                           the unacked queue was taken (re-sent)
      [CLOSED, rid]                            the session ended: forget it
  The opcodes are `EntryOp` members; on the wire their values, one letter each
  ("n", "o", "a", "i", "r", "c"). The link is ordered and reliable, so the replica is
  the origin's state as of the last entry received. An entry for an unknown rid is
  ignored (its NEW was lost with an older process, or the replica was dropped).
- Memory is bounded: a replica holding more than `max_unacked` stanzas is dropped
  (`Dropped` fact; the adapter logs it). Its session then fails over by re-login.
- A replica whose origin node is gone is "orphaned" at that time; `max_s` seconds
  later it has expired (the adapter re-routes its unacked messages, like a session
  nobody resumed, XEP-0198 §5). Resumption (`take`) removes it.
- The last `RECENT` stanzas each origin reported sent (acknowledged or not) are kept
  as they came (`handled`): a stanza routed to an origin that died before its link
  ack arrived, but that the origin had already sent to a session, is not routed again
  by the node taking over (it is in that session's replica, or the client has it).
- A malformed entry is a `ReplicaError` (the adapter logs and drops the frame).
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import defusedxml.ElementTree as SafeET

from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.sm import MOD, StreamManagement
from presence_ha.server.xmpp.stanzas import STANZA_TAGS

RECENT = 4096  # stanzas per origin remembered as sent (more than a link's unacked window)


class EntryOp(enum.StrEnum):
    """The opcode of a replica entry; the value is what travels (JSON text)."""

    NEW = "n"
    SENT = "o"
    ACKED = "a"
    INBOUND = "i"
    REWOUND = "r"
    CLOSED = "c"


class ReplicaError(ValueError):
    """An entry this node cannot apply."""


@dataclass(frozen=True)
class Dropped:
    rid: str
    jid: JID
    reason: str


@dataclass(eq=False)
class Replica:
    origin: str  # the node that holds (held) the session
    jid: JID
    inbound: int
    acked: int
    max_s: int
    unacked: deque[str] = field(default_factory=deque)  # serialized stanzas, oldest first
    orphaned_at: float | None = None
    dead: bool = False  # its origin process is gone for good (restarted)

    def to_sm(self, rid: str) -> StreamManagement:
        stanzas = [parse_stanza(text) for text in self.unacked]
        return StreamManagement.restore(rid, self.max_s, self.inbound, self.acked, stanzas)


def parse_stanza(text: str) -> ET.Element:
    try:
        stanza = SafeET.fromstring(text)
    except (ET.ParseError, ValueError) as exc:
        raise ReplicaError(f"bad stanza in a replica: {exc}") from None
    if stanza.tag not in STANZA_TAGS:
        raise ReplicaError(f"not a stanza: {stanza.tag}")
    return stanza


def stanza_key(stanza: ET.Element) -> tuple[str, str, str, str] | None:
    """What identifies one stanza between nodes: kind, sender, recipient account, id;
    None without an id (such a stanza cannot be told from another)."""
    stanza_id = stanza.get("id")
    if not stanza_id:
        return None
    return stanza.tag, stanza.get("from", ""), stanza.get("to", "").split("/", 1)[0], stanza_id


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MOD:
        raise ReplicaError(f"bad counter {value!r}")
    return value


class ReplicaStore:
    def __init__(self, max_unacked: int = 1000) -> None:
        self.max_unacked = max_unacked
        self._replicas: dict[str, Replica] = {}
        self._recent: dict[str, deque[str]] = {}  # origin -> its last SENT stanzas, serialized

    def __len__(self) -> int:
        return len(self._replicas)

    def get(self, rid: str) -> Replica | None:
        return self._replicas.get(rid)

    def apply(self, origin: str, entries: list[Any]) -> list[Dropped]:
        """Apply `origin`'s entries in order; return the replicas dropped for size."""
        if not isinstance(entries, list):
            raise ReplicaError("entries must be a list")
        dropped: list[Dropped] = []
        for entry in entries:
            if not isinstance(entry, list) or len(entry) < 2 or not isinstance(entry[1], str):
                raise ReplicaError(f"bad entry {entry!r:.80}")
            fact = self._apply_one(origin, entry[0], entry[1], entry[2:])
            if fact is not None:
                dropped.append(fact)
        return dropped

    def _apply_one(self, origin: str, op: Any, rid: str, args: list[Any]) -> Dropped | None:
        if op == EntryOp.NEW:
            self._open(origin, rid, args)
            return None
        replica = self._replicas.get(rid)
        if replica is None or replica.origin != origin:
            return None
        if op == EntryOp.SENT:
            if not args or not isinstance(args[0], str):
                raise ReplicaError("'o' without a stanza")
            replica.unacked.append(args[0])
            self._recent.setdefault(origin, deque(maxlen=RECENT)).append(args[0])
            if len(replica.unacked) > self.max_unacked:
                del self._replicas[rid]
                return Dropped(rid, replica.jid, f"more than {self.max_unacked} unacknowledged stanzas")
        elif op == EntryOp.ACKED:
            self._acknowledge(replica, _int(args[0] if args else None))
        elif op == EntryOp.INBOUND:
            replica.inbound = _int(args[0] if args else None)
        elif op == EntryOp.REWOUND:
            replica.unacked.clear()
        elif op == EntryOp.CLOSED:
            del self._replicas[rid]
        else:
            raise ReplicaError(f"unknown entry {op!r}")
        return None

    def _open(self, origin: str, rid: str, args: list[Any]) -> None:
        if len(args) != 4 or not isinstance(args[0], str):
            raise ReplicaError("'n' needs jid, inbound, acked, max_s")
        try:
            jid = JID.parse(args[0])
        except InvalidJid:
            raise ReplicaError(f"bad JID {args[0]!r:.80}") from None
        self._replicas[rid] = Replica(origin, jid, _int(args[1]), _int(args[2]), _int(args[3]))

    @staticmethod
    def _acknowledge(replica: Replica, h: int) -> None:
        newly = (h - replica.acked) % MOD
        if newly >= MOD // 2:
            return  # an old ack overtaken by a newer one: nothing to do
        for _ in range(min(newly, len(replica.unacked))):
            replica.unacked.popleft()
        replica.acked = h

    def handled(self, origin: str) -> set[tuple[str, str, str, str]]:
        """The `stanza_key`s of the stanzas `origin` last reported sent to a session."""
        keys: set[tuple[str, str, str, str]] = set()
        for text in self._recent.get(origin, ()):
            try:
                key = stanza_key(parse_stanza(text))
            except ReplicaError:
                continue
            if key is not None:
                keys.add(key)
        return keys

    def find(self, origin: str, jid: JID) -> str | None:
        """The rid of `origin`'s replica of the session `jid` (a full JID), if any."""
        for rid, replica in self._replicas.items():
            if replica.origin == origin and replica.jid == jid:
                return rid
        return None

    def take(self, rid: str, bare: JID) -> Replica | None:
        """Remove and return the replica `rid` if it belongs to the account `bare`."""
        replica = self._replicas.get(rid)
        if replica is None or replica.jid.bare != bare:
            return None
        del self._replicas[rid]
        return replica

    def forget_origin(self, origin: str) -> int:
        """Drop every replica from `origin` (its sessions ended cleanly elsewhere)."""
        gone = [rid for rid, r in self._replicas.items() if r.origin == origin]
        for rid in gone:
            del self._replicas[rid]
        return len(gone)

    def origins(self) -> set[str]:
        return {r.origin for r in self._replicas.values()}

    def orphan(self, origin: str, now: float, dead: bool = False) -> int:
        """`origin` is unreachable (or, `dead`, a new process): its replicas start their
        resumption window now, unless already started. Returns how many started."""
        started = 0
        for replica in self._replicas.values():
            if replica.origin != origin:
                continue
            replica.dead = replica.dead or dead
            if replica.orphaned_at is None:
                replica.orphaned_at = now
                started += 1
        return started

    def adopt(self, origin: str) -> None:
        """`origin` is reachable again, the same process: its sessions live on there."""
        for replica in self._replicas.values():
            if replica.origin == origin and not replica.dead:
                replica.orphaned_at = None

    def expired(self, now: float) -> list[tuple[str, Replica]]:
        """Remove and return the orphaned replicas whose resumption window closed."""
        gone = [(rid, r) for rid, r in self._replicas.items()
                if r.orphaned_at is not None and now - r.orphaned_at >= r.max_s]
        for rid, _ in gone:
            del self._replicas[rid]
        return gone
