"""XEP-0198 state: the mirror hears every change in order; restore and catch-up."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.xmpp.sm import MOD, AckTooHigh, StreamManagement


class Journal:
    def __init__(self) -> None:
        self.entries: list[tuple] = []

    def sent(self, stanza: ET.Element) -> None:
        self.entries.append(("sent", stanza.get("id")))

    def acked(self, h: int) -> None:
        self.entries.append(("acked", h))

    def rewound(self) -> None:
        self.entries.append(("rewound",))

    async def before_output(self, data: bytes) -> None:
        return None


def message(n: int) -> ET.Element:
    return ET.Element("message", {"id": f"m{n}"})


def test_the_mirror_hears_sends_acks_and_rewinds_in_order() -> None:
    sm = StreamManagement("r1", 60)
    sm.mirror = journal = Journal()
    for n in range(3):
        sm.record_outbound(message(n))
    sm.acknowledge(2)
    sm.acknowledge(2)  # nothing new: not mirrored
    assert [s.get("id") for s in sm.take_unacked()] == ["m2"]
    assert journal.entries == [("sent", "m0"), ("sent", "m1"), ("sent", "m2"), ("acked", 2), ("rewound",)]


def test_restore_continues_the_counters() -> None:
    sm = StreamManagement.restore("r1", 60, inbound=7, acked=MOD - 1, unacked=[message(0), message(1)])
    assert (sm.inbound, sm.acked, sm.outbound, sm.unacked_count) == (7, MOD - 1, 1, 2)
    sm.acknowledge(0)  # wraps at 2^32
    assert [s.get("id") for s in sm.unacked()] == ["m1"]
    with pytest.raises(AckTooHigh):
        sm.acknowledge(2)


def test_catch_up_trusts_a_client_that_got_more_than_the_replica_knew() -> None:
    sm = StreamManagement.restore("r1", 60, inbound=0, acked=3, unacked=[message(4)])
    assert sm.catch_up(4) == 0 and sm.unacked_count == 1  # within what we know: nothing to do
    assert sm.catch_up(6) == 2
    assert (sm.acked, sm.outbound, sm.unacked_count) == (6, 6, 0)
    assert sm.catch_up(2) == 0  # behind: the client's fault, left to acknowledge()
