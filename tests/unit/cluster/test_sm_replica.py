"""The backup node's replicas of XEP-0198 sessions: entries in, state and facts out."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.cluster.sm_replica import RECENT, Dropped, ReplicaError, ReplicaStore, stanza_key
from presence_ha.server.xmpp.jid import JID

ALICE = "alice@example.test/phone"


def msg(n: int) -> str:
    return f"<message to='{ALICE}' id='m{n}'><body>{n}</body></message>"


def store_with_alice(max_unacked: int = 10) -> ReplicaStore:
    store = ReplicaStore(max_unacked)
    store.apply("n1", [["n", "r1", ALICE, 0, 0, 60]] + [["o", "r1", msg(n)] for n in range(4)])
    return store


def test_entries_build_the_origin_state_and_resume_restores_it() -> None:
    store = store_with_alice()
    store.apply("n1", [["a", "r1", 2], ["i", "r1", 5]])
    replica = store.take("r1", JID.parse("alice@example.test"))
    sm = replica.to_sm("r1")
    assert (sm.inbound, sm.acked, sm.outbound) == (5, 2, 4)
    assert [s.get("id") for s in sm.unacked()] == ["m2", "m3"]
    assert store.get("r1") is None


def test_a_replica_is_only_for_its_own_account_and_origin() -> None:
    store = store_with_alice()
    assert store.take("r1", JID.parse("bob@example.test")) is None
    store.apply("n3", [["c", "r1"], ["o", "r1", msg(9)]])  # another node cannot touch it
    assert len(store.get("r1").unacked) == 4
    store.apply("n1", [["c", "r1"]])
    assert store.get("r1") is None
    store.apply("n1", [["o", "r1", msg(9)], ["a", "r1", 9]])  # after the end: ignored
    assert len(store) == 0


def test_rewind_clears_and_acks_never_go_backwards() -> None:
    store = store_with_alice()
    store.apply("n1", [["a", "r1", 3], ["a", "r1", 1]])
    assert (store.get("r1").acked, len(store.get("r1").unacked)) == (3, 1)
    store.apply("n1", [["r", "r1"]])
    assert not store.get("r1").unacked


def test_a_replica_over_its_cap_is_dropped_with_a_fact() -> None:
    store = store_with_alice(max_unacked=5)
    assert store.apply("n1", [["o", "r1", msg(4)]]) == []
    (fact,) = store.apply("n1", [["o", "r1", msg(5)]])
    assert fact == Dropped("r1", JID.parse(ALICE), "more than 5 unacknowledged stanzas")
    assert store.get("r1") is None


@pytest.mark.parametrize("entries", [
    "not a list", [["n", "r2", "not a jid@@/", 0, 0, 60]], [["i", "r1", -1]], [["z", "r1"]], [[1, 2]],
    [["a", "r1", 2**32]], [["n", "r2", ALICE, 0]],
])
def test_malformed_entries_are_errors(entries) -> None:
    with pytest.raises(ReplicaError):
        store_with_alice().apply("n1", entries)


def test_a_bad_stanza_fails_the_resume_not_the_store() -> None:
    store = ReplicaStore()
    store.apply("n1", [["n", "r1", ALICE, 0, 0, 60], ["o", "r1", "<!DOCTYPE x [<!ENTITY a 'b'>]><message/>"]])
    with pytest.raises(ReplicaError):
        store.get("r1").to_sm("r1")


def test_orphans_expire_after_their_window_unless_the_origin_returns() -> None:
    store = store_with_alice()
    store.apply("n1", [["n", "r2", "bob@example.test/desk", 0, 0, 30]])
    assert store.orphan("n1", now=100.0) == 2
    assert store.orphan("n1", now=110.0) == 0  # the window started at 100
    store.adopt("n1")  # the same process is reachable again
    assert store.expired(now=1000.0) == []
    store.orphan("n1", now=200.0, dead=True)  # then it restarted: for good
    store.adopt("n1")
    assert [rid for rid, _ in store.expired(now=231.0)] == ["r2"]
    assert [rid for rid, _ in store.expired(now=260.0)] == ["r1"]
    assert store.origins() == set()


def test_entry_opcodes_travel_as_their_one_letter_values() -> None:
    from presence_ha.server.cluster import wire
    from presence_ha.server.cluster.sm_replica import EntryOp

    assert [op.value for op in EntryOp] == ["n", "o", "a", "i", "r", "c"]
    frame = wire.encode_control(wire.Op.SM, e=[[EntryOp.NEW, "r1", ALICE, 0, 0, 60], [EntryOp.SENT, "r1", msg(1)]])
    store = ReplicaStore()
    store.apply("n1", wire.decode_control(frame).fields["e"])
    assert frame.startswith(b'{"op":"sm","e":[["n","r1",') and len(store.get("r1").unacked) == 1
    with pytest.raises(ReplicaError):
        store.apply("n1", [["x", "r1"]])


def test_the_stanzas_an_origin_sent_are_remembered_acknowledged_or_not() -> None:
    """A stanza the origin sent to a session (its replica got it) is not routed again by
    the node taking over, even if the client acknowledged it and the replica let it go."""
    store = store_with_alice()
    store.apply("n1", [["a", "r1", 3], ["c", "r1"]])  # acknowledged, then the session ended
    handled = store.handled("n1")
    assert stanza_key(ET.fromstring(f"<message to='{ALICE}' id='m0'/>")) in handled
    assert stanza_key(ET.fromstring("<message to='alice@example.test' id='m3'/>")) in handled  # any resource
    assert stanza_key(ET.fromstring(f"<message to='{ALICE}' id='m7'/>")) not in handled
    assert stanza_key(ET.fromstring(f"<message to='{ALICE}' id='m0' from='eve@example.test'/>")) not in handled
    assert store.handled("n2") == set()
    assert stanza_key(ET.fromstring(f"<message to='{ALICE}'/>")) is None  # no id: never taken for another


def test_the_remembered_stanzas_are_bounded() -> None:
    store = store_with_alice(max_unacked=RECENT + 10)
    store.apply("n1", [["o", "r1", msg(n)] for n in range(4, RECENT + 4)])
    handled = store.handled("n1")
    assert len(handled) == RECENT
    assert stanza_key(ET.fromstring(f"<message to='{ALICE}' id='m3'/>")) not in handled
