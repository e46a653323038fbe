"""A hosted session whose dialled node died waits in its stream's replica (sm_mirror.park).

Scenario: node n1 relayed alice's client to this node and replicated the client's
stream here; n1 dies. The hosted session stays (still routed to) and queues in the
replica, after what n1 never acknowledged (less what n1 had already sent the client),
so that alice's client resuming here gets all of it in order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from presence_ha.server.cluster.sm_mirror import SmReplication
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.jid import JID

ALICE = "alice@example.test/phone"


def msg(n: int) -> ET.Element:
    return ET.fromstring(f"<message to='{ALICE}' id='m{n}'><body>{n}</body></message>")


async def _no_backup() -> str | None:
    return None


def replication_with_alice() -> SmReplication:
    replication = SmReplication(None, None, "n2", _no_backup)  # type: ignore[arg-type]  # park needs neither
    entries = [["n", "r1", ALICE, 0, 0, 60]] + [["o", "r1", ET.tostring(msg(n), encoding="unicode")] for n in range(2)]
    replication.store.apply("n1", entries)
    return replication


def queued(replication: SmReplication) -> list[str]:
    replica = replication.store.get("r1")
    assert replica is not None
    return [ET.fromstring(text).get("id") or "" for text in replica.unacked]


def test_a_parked_session_queues_what_it_is_sent_after_what_the_dead_node_never_acknowledged() -> None:
    replication = replication_with_alice()
    sent: list[ET.Element] = []
    session = Session(jid=JID.parse(ALICE), send=lambda stanza, wire=None: sent.append(stanza))
    # m1 was sent to the client by n1 (its replica has it): not queued twice; m2 never reached it.
    assert replication.park("n1", session, [msg(1), msg(2)])
    session.send(msg(3))
    assert queued(replication) == ["m0", "m1", "m2", "m3"]
    assert sent == []
    session.close()  # replaced or ended: no longer parked
    assert not replication._parked


def test_without_a_replica_nothing_is_parked() -> None:
    replication = replication_with_alice()
    bob = Session(jid=JID.parse("bob@example.test/x"), send=lambda stanza, wire=None: None)
    assert not replication.park("n1", bob, [msg(5)])
    alice = Session(jid=JID.parse(ALICE), send=lambda stanza, wire=None: None)
    assert not replication.park("n3", alice, [])  # a replica of n1's, not n3's
    assert queued(replication) == ["m0", "m1"]


class Ctx:
    """What a parked session whose replica went needs of the node: its sessions, the
    events it notifies, and routing (here: recorded)."""

    def __init__(self) -> None:
        from presence_ha.server.sessions import SessionRegistry

        self.sessions = SessionRegistry()
        self.events: list[object] = []
        self.delivered: list[ET.Element] = []

    async def notify(self, event: object) -> None:
        self.events.append(event)

    async def deliver(self, stanza: ET.Element) -> None:
        self.delivered.append(stanza)


async def test_a_parked_session_whose_replica_went_ends_and_its_message_is_routed_again() -> None:
    import asyncio

    from presence_ha.server.router import SessionClosed

    replication = replication_with_alice()
    ctx = Ctx()
    replication.ctx = ctx  # type: ignore[assignment]
    session = Session(jid=JID.parse(ALICE), send=lambda stanza, wire=None: None)
    ctx.sessions.add(session)
    assert replication.park("n1", session, [])
    replication.store.apply("n1", [["c", "r1"]])  # its origin came back and closed it
    session.send(msg(7))
    await asyncio.sleep(0)
    await asyncio.gather(*replication._ending)
    assert ctx.sessions.get(session.jid) is None
    assert [type(e) for e in ctx.events] == [SessionClosed]
    assert [s.get("id") for s in ctx.delivered] == ["m7"]
