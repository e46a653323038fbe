"""What to do with a frame a peer node sent: one decision per frame (pure).

Rules of this module:
- `triage(kind, payload, inbox)` reads the frame's kind, its header and (for a routed
  stanza) its recipient from the text, and the inbox's state; it returns a `Verdict`
  and the frame's inbox key when the verdict needs one. No I/O, no parsing of XML,
  no clock: `ClusterService._on_frame` executes what it returns.
- Verdicts:
  `DELIVER_NOW` a routed stanza whose recipient has nothing queued: parse it and
      deliver it at once (key: its inbox key, None when the inbox is empty and the
      key was not needed);
  `QUEUE` a routed stanza behind its recipient's queued work, waiting as bytes
      and parsed in its turn (key: its recipient);
  `QUEUE_PARSED` a routed stanza whose recipient is not readable from the text:
      parse it now, then queue it under its parsed recipient (`recipient_key`);
  `SESSION` a stanza of a relayed session (`U <sid>` / `D <sid>` header), or a stanza
      frame of no known header (decoding it says why it is dropped);
  `CONTROL` a CONTROL frame;
  `DROP` a frame of a kind the cluster does not take.
- The fast path (a message or presence while nothing is queued at all) allocates
  nothing here: the verdict is a module constant. Per-frame cost was measured
  (`loadtest.link_bench`): this path carries every cross-node stanza.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from typing import Protocol

from presence_ha.server.cluster import wire
from presence_ha.server.cluster.inbox import InboxKey, RecipientKey
from presence_ha.server.link import Kind


class Verdict(enum.Enum):
    DELIVER_NOW = "deliver now"
    QUEUE = "queue"
    QUEUE_PARSED = "queue parsed"
    SESSION = "session stanza"
    CONTROL = "control"
    DROP = "drop"


class InboxState(Protocol):
    """What the triage reads of the inbox (`server.cluster.inbox.Inbox`)."""

    @property
    def empty(self) -> bool: ...

    def idle(self, key: InboxKey) -> bool: ...


Decision = tuple[Verdict, RecipientKey | None]

_DELIVER_NOW: Decision = (Verdict.DELIVER_NOW, None)
_QUEUE_PARSED: Decision = (Verdict.QUEUE_PARSED, None)
_SESSION: Decision = (Verdict.SESSION, None)
_CONTROL: Decision = (Verdict.CONTROL, None)
_DROP: Decision = (Verdict.DROP, None)


def triage(kind: Kind, payload: bytes, inbox: InboxState) -> Decision:
    if kind is Kind.STANZA:
        if not payload.startswith(wire.ROUTED_PREFIX):
            return _SESSION
        if inbox.empty:  # its turn is now: no key needed
            return _DELIVER_NOW
        key = routed_frame_key(payload)
        if key is None:
            return _QUEUE_PARSED
        return (Verdict.DELIVER_NOW if inbox.idle(key) else Verdict.QUEUE), key
    if kind is Kind.CONTROL:
        return _CONTROL
    return _DROP


def recipient_key(stanza: ET.Element) -> RecipientKey:
    """The inbox key of a routed stanza: its recipient account (ordered per receiver)."""
    to = stanza.get("to") or ""
    return to.split("/", 1)[0]


def routed_frame_key(payload: bytes) -> RecipientKey | None:
    """`recipient_key` of a routed frame, read without parsing it (None: parse it)."""
    return wire.routed_recipient(payload)
