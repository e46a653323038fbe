"""Failover with dual connections: real nodes, real faults, the real client (SPEC §8).

Scenarios (HA pair n1/n2, SRM heartbeat 1 s, re-login limits 1-1 s, activation retry
50 ms):
- alice and bob on n1, both dual-connected. n1 is SIGKILLed: n2 takes their users
  over, each client activates its inactive connection (retrying while n2 answers
  "not serving yet"), and alice's message reaches bob within 1 s of the kill.
- carol on n2 is alice's contact. Everything carol sends alice (presence, messages to
  her full and bare JID) reaches alice's active session on n1; her inactive session
  on n2 gets nothing and shows carol no presence. n1 dies; a message carol sends
  around the takeover reaches alice exactly once; carol never sees alice go
  unavailable, n2 answers her probe with alice's restored presence, and alice gets
  carol's presence.
- A manual failover of n1 redirects alice to n2, where her inactive connection is
  activated (no new login); after the fallback she is back on n1.
"""

from __future__ import annotations

import signal
import time

import pytest

from presence_ha.client.policy import Link, Role
from tests.integration.cluster import (  # noqa: F401
    Cluster,
    active_nodes,
    ha_pair_factory,
    ha_states,
    slix_disconnect,
    slix_login,
    wait_until,
)
from tests.integration.test_dual_sessions import DEADLINE_S, FAST_RELOGIN, Party, endpoint, gauges, login  # noqa: F401

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]


def active_on(party: Party, cluster: Cluster, node: str) -> bool:
    state = party.client.policy.state
    return state.active is Link.UP and state.active_endpoint == endpoint(cluster, node)


async def test_sigkill_primary_clients_activate_and_chat_within_a_second(ha_pair_factory, login) -> None:  # noqa: F811
    cluster = ha_pair_factory(params=FAST_RELOGIN)
    alice, bob = await login(cluster, "alice"), await login(cluster, "bob")
    await wait_until(lambda: alice.dual_up and bob.dual_up, DEADLINE_S, "both clients dual-connected")

    killed_at = time.monotonic()
    cluster.node("n1").process.send_signal(signal.SIGKILL)
    await wait_until(lambda: active_on(alice, cluster, "n2"), 5, "alice active on n2", 0.005)
    assert alice.client.send_message(cluster.jid("bob"), "still there?")
    await wait_until(lambda: any(m.body == "still there?" for m in bob.messages()), 5, "bob gets the message", 0.005)
    elapsed = time.monotonic() - killed_at
    print(f"\nmessage exchanged {elapsed * 1000:.0f} ms after SIGKILL of n1")
    # Target 1 s (issue 6; measured at 0.3-0.7 s on a quiet machine). The bound here is
    # looser because CI shares two cores with three test workers: a re-login (seconds)
    # would still fail it; the figure itself is measured by `loadtest failover`.
    assert elapsed < 2.5

    await wait_until(lambda: active_on(bob, cluster, "n2"), 5, "bob active on n2")
    assert [m.via for m in bob.messages()] == [Role.ACTIVE]
    assert set(active_nodes(cluster.db_url).values()) == {"n2"}
    await wait_until(lambda: gauges(cluster, "n2")["jsm_sessions_client"] == 2, 5, "n2 counts both clients active")
    assert gauges(cluster, "n2")["jsm_sessions_client_inactive"] == 0
    assert alice.connection_events("activated") and bob.connection_events("activated")


async def subscribed_pair(cluster: Cluster, user: str, contact: str, contact_node: str) -> None:
    """`user` (n1) and `contact` subscribe to each other (slixmpp auto-approves)."""
    a = await slix_login(cluster, user, resource="setup")
    b = await slix_login(cluster, contact, node=contact_node, resource="setup")
    try:
        for client in (a, b):  # pending requests reach a resource after its initial presence
            await client.get_roster()
            client.send_presence()
        a.send_presence_subscription(pto=cluster.jid(contact), ptype="subscribe")
        await wait_until(lambda: a.client_roster[cluster.jid(contact)]["subscription"] == "both", DEADLINE_S,
                         "a mutual subscription")
    finally:
        await slix_disconnect(a)
        await slix_disconnect(b)


async def carol_watching_alice(ha_pair_factory) -> tuple[Cluster, object, list[tuple[str, str]]]:  # noqa: F811
    """An HA pair with alice (n1) and carol (n2) subscribed to each other; carol logged
    in on n2, recording every (from, available|unavailable) presence she gets."""
    users = (("alice", "alice-pw"), ("carol", "carol-pw"))
    cluster = ha_pair_factory(users=users, placement={"carol": "n2"}, params=FAST_RELOGIN)
    await subscribed_pair(cluster, "alice", "carol", "n2")
    carol = await slix_login(cluster, "carol", node="n2", resource="desk")
    seen: list[tuple[str, str]] = []
    carol.add_event_handler("presence_available", lambda p: seen.append((str(p["from"]), "available")))
    carol.add_event_handler("presence_unavailable", lambda p: seen.append((str(p["from"]), "unavailable")))
    return cluster, carol, seen


def alice_seen(seen: list[tuple[str, str]], alice: str) -> list[str]:
    return [kind for who, kind in seen if who == alice]


async def test_inactive_session_gets_nothing_then_activation_hands_over(ha_pair_factory, login) -> None:  # noqa: F811
    cluster, carol, seen = await carol_watching_alice(ha_pair_factory)
    phone = f"{cluster.jid('alice')}/phone"
    try:
        carol.send_presence()
        # a long retry: the first activation (before the takeover) is refused, the next waits 2 s
        alice = await login(cluster, "alice", resource="phone", activate_retry_s=2.0)
        await wait_until(lambda: alice_seen(seen, phone) == ["available"], DEADLINE_S, "carol sees alice (from n1)")
        await wait_until(lambda: alice.dual_up, DEADLINE_S, "alice dual-connected")

        # carol (n2) talks to alice: it all goes to alice's active session on n1, none to n2's inactive one
        carol.send_presence(pshow="away", pstatus="lunch")
        carol.send_message(mto=phone, mbody="one", mtype="chat")
        carol.send_message(mto=cluster.jid("alice"), mbody="two", mtype="chat")
        await wait_until(lambda: sorted(m.body for m in alice.messages()) == ["one", "two"], 5, "carol's messages")
        await wait_until(lambda: any(p.show == "away" for p in alice.presences()), 5, "carol's new presence")
        await carol.plugin["xep_0199"].send_ping(cluster.domain, timeout=5)
        assert {m.via for m in alice.messages()} == {Role.ACTIVE}
        assert {p.via for p in alice.presences()} == {Role.ACTIVE}
        assert alice_seen(seen, phone) == ["available"]  # the inactive session showed no presence

        cluster.node("n1").process.send_signal(signal.SIGKILL)
        # Sent at once: n2 may still route it to n1 (dead, not yet taken over), then takes
        # it back when alice's user moves (server.cluster reclaim); or n2 already serves
        # alice and queues it (or hands it live) at activation. Exactly once either way.
        carol.send_message(mto=cluster.jid("alice"), mbody="three", mtype="chat")
        await wait_until(lambda: active_nodes(cluster.db_url)["alice"] == "n2", 10, "n2 took alice over")
        await wait_until(lambda: active_on(alice, cluster, "n2"), 5, "alice active on n2")
        assert alice.connection_events("activated")
        await wait_until(lambda: "three" in [m.body for m in alice.messages()], 5, "the queued message")
        assert [m.body for m in alice.messages()].count("three") == 1
        # alice's client keeps carol's presence across the switch (<hold contacts='kept'/>,
        # docs/xep-presence-ha-backup.md §4): shown still, not sent again; carol's next
        # change arrives on the new active connection.
        await carol.plugin["xep_0199"].send_ping(cluster.domain, timeout=5)
        carol_bare = str(carol.boundjid.bare)
        assert [show for show, _ in alice.client.roster[carol_bare].presences.values()] == ["away"]
        carol.send_presence(pshow="dnd", pstatus="busy")
        await wait_until(lambda: any(p.show == "dnd" and p.via is Role.ACTIVE for p in alice.presences()), 5,
                         "carol's next presence, now from n2")
        assert alice_seen(seen, phone) == ["available"]  # no flap (SPEC §8): carol still sees alice
        # A probe is answered from n2 now, with alice's restored presence.
        carol.send_presence(pto=cluster.jid("alice"), ptype="probe")
        await wait_until(lambda: alice_seen(seen, phone) == ["available", "available"], 5, "n2 answers for alice")
    finally:
        await slix_disconnect(carol)


async def test_contacts_see_no_flap_for_the_switched_and_unavailable_after_the_grace_for_the_rest(
    ha_pair_factory, login,  # noqa: F811
) -> None:
    users = (("alice", "alice-pw"), ("dave", "dave-pw"), ("carol", "carol-pw"))
    grace_s = 3
    cluster = ha_pair_factory(users=users, placement={"carol": "n2"},
                              params={**FAST_RELOGIN, "presence_grace_s": grace_s})
    await subscribed_pair(cluster, "alice", "carol", "n2")
    await subscribed_pair(cluster, "dave", "carol", "n2")
    carol = await slix_login(cluster, "carol", node="n2", resource="desk")
    seen: list[tuple[str, str, float]] = []
    carol.add_event_handler("presence_available",
                            lambda p: seen.append((str(p["from"]), "available", time.monotonic())))
    carol.add_event_handler("presence_unavailable",
                            lambda p: seen.append((str(p["from"]), "unavailable", time.monotonic())))
    alice_jid, dave_jid = f"{cluster.jid('alice')}/phone", f"{cluster.jid('dave')}/laptop"
    dave = await slix_login(cluster, "dave", resource="laptop")  # a plain client: it will not come back
    try:
        carol.send_presence()
        dave.send_presence()
        alice = await login(cluster, "alice", resource="phone")
        await wait_until(lambda: alice.dual_up, DEADLINE_S, "alice dual-connected")
        kinds = lambda who: [kind for jid, kind, _ in seen if jid == who]  # noqa: E731
        await wait_until(lambda: set(kinds(alice_jid)) == {"available"} and set(kinds(dave_jid)) == {"available"},
                         DEADLINE_S, "carol sees alice and dave")

        killed_at = time.monotonic()
        cluster.node("n1").process.send_signal(signal.SIGKILL)
        await wait_until(lambda: active_on(alice, cluster, "n2"), 5, "alice active on n2")
        await wait_until(lambda: "unavailable" in kinds(dave_jid), grace_s + 10, "dave's unavailable after the grace")
        gone_at = next(t for jid, kind, t in seen if jid == dave_jid and kind == "unavailable")
        assert gone_at - killed_at >= grace_s - 0.5  # not before the grace
        await carol.plugin["xep_0199"].send_ping(cluster.domain, timeout=5)
        assert "unavailable" not in kinds(alice_jid)  # alice switched over: no flap
        assert kinds(dave_jid).count("unavailable") == 1
        # Probes are answered from the shared records: dave is gone from them, alice is not.
        carol.send_presence(pto=cluster.jid("dave"), ptype="probe")
        carol.send_presence(pto=cluster.jid("alice"), ptype="probe")
        await wait_until(lambda: kinds(alice_jid).count("available") >= 2, 5, "alice's presence answers the probe")
        assert kinds(dave_jid)[-1] == "unavailable"
    finally:
        await slix_disconnect(carol)
        await slix_disconnect(dave)


async def test_manual_failover_activates_the_inactive_connection_and_fallback_returns(
    ha_pair_factory, login,  # noqa: F811
) -> None:
    cluster = ha_pair_factory(params=FAST_RELOGIN)
    alice = await login(cluster, "alice")
    await wait_until(lambda: alice.dual_up, DEADLINE_S, "alice dual-connected")

    cluster.cli("ha", "failover", "n1")
    await wait_until(lambda: active_on(alice, cluster, "n2"), 15, "alice active on n2")
    assert len(alice.connection_events("connected")) == 1  # activated, not a new login
    # The backup connection carries on: activated by the server after the takeover
    # (or by the client, had its active connection been redirected first).
    assert alice.connection_events("activated")

    await wait_until(lambda: ha_states(cluster.db_url)["n1"] == ("Idle", "On Admin Request"), 10, "n1 failed over")
    cluster.cli("ha", "fallback", "n1")
    await wait_until(lambda: set(active_nodes(cluster.db_url).values()) == {"n1"}, 30, "alice's user back on n1")
    await wait_until(lambda: active_on(alice, cluster, "n1"), 15, "alice active on n1 again")
    assert alice.client.send_message(cluster.jid("alice"), "note to self")
    await wait_until(lambda: any(m.body == "note to self" for m in alice.messages()), 5, "the round trip on n1")



async def test_manual_failover_and_fallback_show_contacts_no_flap(ha_pair_factory, login) -> None:  # noqa: F811
    cluster, carol, seen = await carol_watching_alice(ha_pair_factory)
    phone = f"{cluster.jid('alice')}/phone"
    try:
        carol.send_presence()
        alice = await login(cluster, "alice", resource="phone")
        await wait_until(lambda: alice.dual_up and "available" in alice_seen(seen, phone), DEADLINE_S,
                         "alice dual-connected, seen by carol")

        cluster.cli("ha", "failover", "n1")  # n1 closes alice's active session, n2 takes her over
        await wait_until(lambda: active_on(alice, cluster, "n2"), 15, "alice active on n2")
        await wait_until(lambda: ha_states(cluster.db_url)["n1"] == ("Idle", "On Admin Request"), 10, "n1 failed over")
        cluster.cli("ha", "fallback", "n1")  # (n1, failed over, takes no backup connection meanwhile)
        await wait_until(lambda: active_on(alice, cluster, "n1"), 30, "alice back on n1")
        await carol.plugin["xep_0199"].send_ping(cluster.domain, timeout=5)
        assert "unavailable" not in alice_seen(seen, phone)  # handed over both ways: no flap (SPEC §8)
    finally:
        await slix_disconnect(carol)


async def exchange_after(cluster: Cluster, sender: Party, receiver: Party, node: str, event_at: float,
                         text: str) -> float:
    """Seconds from `event_at` until `sender`, active on `node`, got `text` to `receiver`."""
    await wait_until(lambda: active_on(sender, cluster, node) and active_on(receiver, cluster, node), 15,
                     f"both clients active on {node}", 0.005)
    assert sender.client.send_message(cluster.jid("bob"), text)
    await wait_until(lambda: any(m.body == text for m in receiver.messages()), 5, f"bob gets {text!r}", 0.005)
    return time.monotonic() - event_at


@pytest.mark.parametrize("fault", ["SIGTERM", "manual failover"])
async def test_sigterm_manual_failover_and_fallback_each_switch_within_a_second(
    ha_pair_factory, login, fault: str,  # noqa: F811
) -> None:
    """Issue 6: every client can exchange a message within 1 s of the event (timers
    shortened), nothing acknowledged is lost, and the counters follow SPEC §8."""
    cluster = ha_pair_factory(params=FAST_RELOGIN)
    alice, bob = await login(cluster, "alice"), await login(cluster, "bob")
    await wait_until(lambda: alice.dual_up and bob.dual_up, DEADLINE_S, "both clients dual-connected")
    await wait_until(lambda: gauges(cluster, "n1")["jsm_sessions_client"] == 2
                     and gauges(cluster, "n2")["jsm_sessions_client_inactive"] == 2, 5, "counters before")

    event_at = time.monotonic()
    if fault == "SIGTERM":
        cluster.node("n1").process.send_signal(signal.SIGTERM)
    else:
        cluster.cli("ha", "failover", "n1")
    elapsed = await exchange_after(cluster, alice, bob, "n2", event_at, "after the failover")
    print(f"\n{fault}: message exchanged {elapsed * 1000:.0f} ms after the event")
    # Target 1 s (measured 0.07-0.45 s); the bound leaves room for a loaded machine.
    assert elapsed < 1.5
    assert [m.body for m in bob.messages()].count("after the failover") == 1
    await wait_until(lambda: gauges(cluster, "n2")["jsm_sessions_client"] == 2, 5, "n2 counts both clients active")

    if fault == "manual failover":
        await wait_until(lambda: ha_states(cluster.db_url)["n1"] == ("Idle", "On Admin Request"), 10, "n1 failed over")
        event_at = time.monotonic()
        cluster.cli("ha", "fallback", "n1")
        elapsed = await exchange_after(cluster, alice, bob, "n1", event_at, "after the fallback")
        print(f"fallback: message exchanged {elapsed * 1000:.0f} ms after the command")
        assert elapsed < 1.5  # measured 0.43-0.46 s: the clients follow the redirect at once
        assert [m.body for m in bob.messages()].count("after the fallback") == 1
        await wait_until(lambda: gauges(cluster, "n1")["jsm_sessions_client"] == 2, 5, "n1 counts both clients again")
