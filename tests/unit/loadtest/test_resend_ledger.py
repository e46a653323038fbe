"""The report's message figures with the failover resend (issue 18, item 7).

A resend may deliver a message twice; the receiver drops the copy by id. The figures
must keep both visible: `duplicated` counts copies the application got, and
`duplicates_dropped` the copies receivers recognised; `resent` counts the sends again,
`delivered_by_resend` the messages only the resend delivered.
"""

from __future__ import annotations

from presence_ha.loadtest import scenario
from presence_ha.loadtest.scenario import Acked, Ledger, Received, Resent, Sent


def test_resend_figures() -> None:
    ledger = Ledger().feed([
        # routed by the dying node, never acked: the resend's copy is dropped by b
        Sent("a:1", "a", "b", 1.0), Received("a:1", "b", "n2", 1.1), Resent("a:1", 5.0),
        Received("a:1", "b", "n2", 5.1, dropped=True),
        # died with the node: only the resend delivers it
        Sent("a:2", "a", "b", 1.5), Resent("a:2", 5.0), Received("a:2", "b", "n2", 5.1), Acked("a:2", 5.2),
        # resent twice (two failovers in a row), never delivered: lost
        Sent("a:3", "a", "b", 1.8), Resent("a:3", 5.0), Resent("a:3", 9.0),
        # a receiver without the filter: a copy delivered twice
        Sent("a:4", "a", "c", 2.0), Received("a:4", "c", "n1", 2.1), Resent("a:4", 5.0),
        Received("a:4", "c", "n2", 5.1),
    ])
    assert ledger.messages() == {
        "sent": 4, "acked": 1, "delivered": 3, "lost": 1, "lost_acked": 0, "bounced": 0, "duplicated": 1,
        "duplicates_dropped": 1, "resent": 5, "resent_messages": 4, "delivered_by_resend": 1,
        "unknown_received": 0,
    }
    assert ledger.lost_ids() == ["a:3"]
    assert ledger.first_delivery("a:2") == 5.1 and ledger.first_delivery("a:3") is None


def test_a_dropped_copy_is_no_round_trip_and_no_delivery() -> None:
    ledger = Ledger().feed([Sent("a:1", "a", "a", 1.0), Received("a:1", "a", "n1", 2.0, dropped=True)])
    assert ledger.round_trips() == {} and ledger.messages()["delivered"] == 0
    assert ledger.messages()["lost"] == 1


def test_event_tuples_of_the_resend() -> None:
    assert scenario.from_tuple(("T", "a:1", 5.0)) == Resent("a:1", 5.0)
    row = ("R", "a:1", "b", "n2", 5.1, False, True)
    assert scenario.from_tuple(row) == Received("a:1", "b", "n2", 5.1, inactive=False, dropped=True)
