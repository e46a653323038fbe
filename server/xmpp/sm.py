"""XEP-0198 stream management state of one session: counters and unacked stanzas.

Rules of this module:
- Pure. `inbound` is the client's stanzas handled (the `h` we report), `outbound` the
  stanzas we sent; both wrap at 2^32 (XEP-0198 §4). Only `message`, `presence` and
  `iq` count; nonzas never do.
- Every stanza sent after `<enable/>` stays in `unacked` until the client's `<a h=''/>`
  covers it. An `h` acknowledging more than was sent is the client's fault
  (`AckTooHigh`); the core answers it with a stream error.
- The object outlives a connection: on resumption (XEP-0198 §5) the new stream adopts
  it and re-sends `take_unacked()`.
- An optional `mirror` (`SmMirror`, set by the host) hears every change of the
  outbound side (sent, acknowledged, rewound), in order, so a replica of this state
  can live on another node (`server.cluster.sm_mirror`). The mirror is called
  synchronously and must not raise; the core never waits for it.
- `restore` rebuilds the state from such a replica (resumption on the backup node).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterable
from typing import Protocol

MOD = 2**32


class AckTooHigh(ValueError):
    def __init__(self, h: int, sent: int) -> None:
        super().__init__(f"client acknowledged {h} stanzas but only {sent} were sent")
        self.h = h
        self.sent = sent


class SmMirror(Protocol):
    """What a replica of the outbound side needs to hear (in call order)."""

    def sent(self, stanza: ET.Element) -> None: ...
    def acked(self, h: int) -> None: ...
    def rewound(self) -> None: ...

    async def before_output(self, data: bytes) -> None:
        """Called by the connection adapter before it writes the core's output: an
        `<a h=''/>` leaves only once the replica holds that `h` (and what it covers)."""


class StreamManagement:
    def __init__(self, resume_id: str | None, max_resume_s: int) -> None:
        self.resume_id = resume_id
        self.max_resume_s = max_resume_s
        self.inbound = 0
        self.outbound = 0
        self._acked = 0
        self._unacked: deque[tuple[int, ET.Element]] = deque()
        self.ack_requested = False
        self.mirror: SmMirror | None = None

    @classmethod
    def restore(cls, resume_id: str, max_resume_s: int, inbound: int, acked: int,
                unacked: Iterable[ET.Element]) -> StreamManagement:
        """The state a replica describes: `acked` stanzas acknowledged, then `unacked`."""
        sm = cls(resume_id, max_resume_s)
        sm.inbound, sm._acked, sm.outbound = inbound % MOD, acked % MOD, acked % MOD
        for stanza in unacked:
            sm.outbound = (sm.outbound + 1) % MOD
            sm._unacked.append((sm.outbound, stanza))
        return sm

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def unacked_count(self) -> int:
        return len(self._unacked)

    def unacked(self) -> list[ET.Element]:
        """The stanzas not acknowledged yet, oldest first (the state stays as it is)."""
        return [stanza for _, stanza in self._unacked]

    def count_inbound(self) -> None:
        self.inbound = (self.inbound + 1) % MOD

    def record_outbound(self, stanza: ET.Element) -> None:
        self.outbound = (self.outbound + 1) % MOD
        self._unacked.append((self.outbound, stanza))
        if self.mirror is not None:
            self.mirror.sent(stanza)

    def covers(self, h: int) -> bool:
        """Whether `h` acknowledges no more than was sent."""
        return (h - self._acked) % MOD <= len(self._unacked)

    def acknowledge(self, h: int) -> None:
        """The client handled `h` stanzas in total (mod 2^32): drop those from the queue."""
        newly = (h - self._acked) % MOD
        if newly > len(self._unacked):
            raise AckTooHigh(h, self.outbound)
        for _ in range(newly):
            self._unacked.popleft()
        self._acked = h % MOD
        self.ack_requested = False
        if self.mirror is not None and newly:
            self.mirror.acked(self._acked)

    def catch_up(self, h: int) -> int:
        """A restored state may lack the last stanzas sent before the old node died
        (their replica was still on the way); the client got them. Take the client's
        `h` as the truth: everything up to it is acknowledged. Returns how many
        stanzas the client had that this state did not know."""
        ahead = (h - self._acked) % MOD
        missing = ahead - len(self._unacked)
        if missing <= 0 or ahead >= MOD // 2:  # behind `acked`: the client's fault, not ours
            return 0
        self._unacked.clear()
        self._acked = self.outbound = h % MOD
        return missing

    def take_unacked(self) -> list[ET.Element]:
        """Remove and return every stanza not acknowledged yet (to re-send or re-route)."""
        stanzas = [stanza for _, stanza in self._unacked]
        self._unacked.clear()
        self.outbound = self._acked
        if self.mirror is not None:
            self.mirror.rewound()
        return stanzas
