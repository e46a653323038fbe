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
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import deque

MOD = 2**32


class AckTooHigh(ValueError):
    def __init__(self, h: int, sent: int) -> None:
        super().__init__(f"client acknowledged {h} stanzas but only {sent} were sent")
        self.h = h
        self.sent = sent


class StreamManagement:
    def __init__(self, resume_id: str | None, max_resume_s: int) -> None:
        self.resume_id = resume_id
        self.max_resume_s = max_resume_s
        self.inbound = 0
        self.outbound = 0
        self._acked = 0
        self._unacked: deque[tuple[int, ET.Element]] = deque()
        self.ack_requested = False

    @property
    def unacked_count(self) -> int:
        return len(self._unacked)

    def count_inbound(self) -> None:
        self.inbound = (self.inbound + 1) % MOD

    def record_outbound(self, stanza: ET.Element) -> None:
        self.outbound = (self.outbound + 1) % MOD
        self._unacked.append((self.outbound, stanza))

    def acknowledge(self, h: int) -> None:
        """The client handled `h` stanzas in total (mod 2^32): drop those from the queue."""
        newly = (h - self._acked) % MOD
        if newly > len(self._unacked):
            raise AckTooHigh(h, self.outbound)
        for _ in range(newly):
            self._unacked.popleft()
        self._acked = h % MOD
        self.ack_requested = False

    def take_unacked(self) -> list[ET.Element]:
        """Remove and return every stanza not acknowledged yet (to re-send or re-route)."""
        stanzas = [stanza for _, stanza in self._unacked]
        self._unacked.clear()
        self.outbound = self._acked
        return stanzas
