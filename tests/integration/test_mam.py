"""Message archive (XEP-0313) and stanza ids (XEP-0359) through slixmpp's own plugins,
on an HA pair, users on both nodes, across a SIGKILL failover.

Transcript (one pair per backend; alice and carol on n1, bob on n2; alice and bob are
mutual contacts):
- alice and bob chat, five messages in turn; bob sees a <stanza-id by='bob'/> on each.
- alice writes to carol, who is offline: the message waits, and is archived already.
- alice reads her archive two messages a page (RSM): all six, in order.
- alice sets her preferences (never archive dave) and reads them back.
- n1 is SIGKILLed; n2 takes its users. alice logs in there: her archive is the same,
  in the same order with the same ids; bob's archive has the ids he saw; carol gets
  her offline message with the same stanza id her archive shows.
"""

from __future__ import annotations

import asyncio
import signal

import pytest
from slixmpp.xmlstream import ET

from presence_ha.db import roster
from tests.integration.cluster import (  # noqa: F401
    DOMAIN,
    db_call,
    ha_pair_factory,
    ha_states,
    slix_disconnect,
    slix_login,
    wait_until,
)

USERS = (("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw"))
PLACEMENT = {"alice": "n1", "bob": "n2", "carol": "n1"}
PLUGINS = ("xep_0030", "xep_0059", "xep_0313", "xep_0359")
NS_MAM = "urn:xmpp:mam:2"


async def online(cluster, username: str, node: str) -> tuple:
    client = await slix_login(cluster, username, node=node, plugins=PLUGINS)
    inbox: asyncio.Queue = asyncio.Queue()
    client.add_event_handler("message", lambda m: inbox.put_nowait(m) if m["body"] else None)
    client.send_presence()
    return client, inbox


async def archive(client, page: int = 2) -> list[tuple[str, str]]:
    """(stanza id, body) of every archived message, oldest first, `page` per query."""
    found = []
    async for result in client.plugin["xep_0313"].iterate(rsm={"max": page}):
        forwarded = result["mam_result"]["forwarded"]["stanza"]
        found.append((result["mam_result"]["id"], forwarded["body"]))
    return found


async def say(sender, receiver_inbox, to: str, body: str):
    sender.send_message(mto=to, mbody=body, mtype="chat")
    received = await asyncio.wait_for(receiver_inbox.get(), 10)
    assert received["body"] == body
    return received


async def prefs(client, payload: str | None = None) -> ET.Element:
    iq = client.make_iq_set() if payload else client.make_iq_get()
    iq.append(ET.fromstring(payload or f"<prefs xmlns='{NS_MAM}'/>"))
    answer = await iq.send(timeout=10)
    return answer.xml.find(f"{{{NS_MAM}}}prefs")


@pytest.mark.timeout(120)
async def test_archive_survives_a_sigkill_failover(ha_pair_factory, db_url):  # noqa: F811
    cluster = ha_pair_factory(users=USERS, placement=PLACEMENT)
    db_call(db_url, lambda s: roster.befriend(s, DOMAIN, [["alice", "bob"]]))
    alice_jid, bob_jid, carol_jid = (cluster.jid(u) for u in ("alice", "bob", "carol"))
    clients = []
    try:
        alice, alice_inbox = await online(cluster, "alice", "n1")
        bob, bob_inbox = await online(cluster, "bob", "n2")
        clients += [alice, bob]
        seen_by_bob = {}
        for n, body in enumerate(("one", "two", "three", "four", "five")):
            if n % 2 == 0:
                got = await say(alice, bob_inbox, bob_jid, body)
                assert got["stanza_id"]["by"] == bob_jid
                seen_by_bob[body] = got["stanza_id"]["id"]
            else:
                got = await say(bob, alice_inbox, alice_jid, body)
                assert got["stanza_id"]["by"] == alice_jid
        alice.send_message(mto=carol_jid, mbody="for carol", mtype="chat")

        before = await archive(alice)
        assert [body for _, body in before] == ["one", "two", "three", "four", "five", "for carol"]
        assert len({sid for sid, _ in before}) == 6

        kept = await prefs(alice, f"<prefs xmlns='{NS_MAM}' default='always'><always/>"
                                  f"<never><jid>dave@{DOMAIN}</jid></never></prefs>")
        assert kept.get("default") == "always"
        read = await prefs(alice)
        assert [j.text for j in read.iter(f"{{{NS_MAM}}}jid")] == [f"dave@{DOMAIN}"]

        cluster.node("n1").process.send_signal(signal.SIGKILL)
        await wait_until(lambda: (ha_states(db_url).get("n2") or ("",))[0] == "Running in Backup Mode", 30,
                         "n2 took n1's users")
        alice, _ = await online(cluster, "alice", "n2")
        clients.append(alice)
        assert await archive(alice, page=4) == before

        bob_incoming = {body: sid for sid, body in await archive(bob) if body in seen_by_bob}
        assert bob_incoming == seen_by_bob

        carol, carol_inbox = await online(cluster, "carol", "n2")
        clients.append(carol)
        offline = await asyncio.wait_for(carol_inbox.get(), 10)
        assert offline["body"] == "for carol"
        assert await archive(carol) == [(offline["stanza_id"]["id"], "for carol")]
    finally:
        for client in clients:
            await slix_disconnect(client)
