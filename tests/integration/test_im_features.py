"""What everyday clients expect, across the nodes of an HA pair (issue #20): blocking,
vCards with avatar hashes, roster versioning, caps, last activity, entity time, and
disco on an account's bare JID -- through slixmpp's own plugins only.

One pair (n1, n2; HA on) per backend for the whole module, each test with its own
users, alternately on n1 and n2, so every check crosses the node link:

- "gina asks the server for its caps, time and uptime, and disco#info on her own
  bare JID and on hugo's (on n2): both are registered accounts";
- "alice fetches her roster twice: the second fetch, with the version she was given,
  is empty; after a change the version moves";
- "alice (n1) blocks bob (n2) and carol (n1): their messages no longer reach her,
  dave's still do; bob stops seeing her online; what she sends bob is refused
  `not-acceptable` with <blocked/>; she unblocks bob and hears him again";
- "hugo (n2) sets an avatar: gina (n1) gets his vCard and its hash in his presence";
- "ivan logs out with a status: judy, his contact, reads how long ago; kate, a
  stranger, is refused";
- "olga (aioxmpp, n2) blocks pete (n1) with aioxmpp's BlockingClient and sets her
  vCard photo with its VCardService: pete's message and vCard query are refused;
  she unblocks him and he reads her photo";
- last, "n1 is SIGKILLed: leo logs in on n2 and finds his vCard and block list, and
  the block still holds".

Waiting is polling with deadlines; the pair is reaped in the finalizer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import signal

import pytest

from presence_ha.db import roster
from presence_ha.server.xmpp import caps

from .cluster import DOMAIN, Cluster, active_nodes, db_call, slix_disconnect, slix_login, start_ha_pair, wait_until

slixmpp = pytest.importorskip("slixmpp")

DEADLINE_S = 20.0
PLACEMENT = {
    "alice": "n1", "carol": "n1", "gina": "n1", "judy": "n1", "kate": "n1", "leo": "n1",
    "bob": "n2", "dave": "n2", "hugo": "n2", "ivan": "n2", "mia": "n2", "nina": "n2", "olga": "n2", "pete": "n1",
}
CIRCLES = [["alice", "bob", "carol", "dave"], ["gina", "hugo"], ["ivan", "judy"], ["leo", "mia", "nina"],
           ["olga", "pete"]]
PLUGINS = ("xep_0030", "xep_0115", "xep_0054", "xep_0153", "xep_0191", "xep_0012", "xep_0202")
AVATAR = bytes(range(256)) * 4  # any bytes: the hash is over what was stored


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_db_url(request, tmp_path_factory):
    from tests.conftest import _new_postgres_url, _pg_drop

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('im') / 'presence-ha.sqlite3'}"
        return
    url = _new_postgres_url()
    yield url
    asyncio.run(_pg_drop(url))


@pytest.fixture(scope="module")
def pair(module_db_url, tmp_path_factory):
    users = [(u, f"{u}-pw") for u in PLACEMENT]
    cluster = start_ha_pair(module_db_url, tmp_path_factory.mktemp("pair"), users=users, placement=PLACEMENT)
    try:
        db_call(module_db_url, lambda s: roster.befriend(s, DOMAIN, CIRCLES))
        yield cluster
    finally:
        for node in cluster.nodes.values():
            if node.alive():
                node.process.send_signal(signal.SIGCONT)
        cluster.stop()


class Seen:
    """What a slixmpp client received: chat bodies, message errors, presence."""

    def __init__(self, client) -> None:
        self.bodies: list[tuple[str, str]] = []
        self.errors: list = []
        self.available: set[str] = set()
        self.avatars: list[tuple[str, str]] = []
        client.add_event_handler("message", self._message)
        client.add_event_handler("message_error", self.errors.append)
        client.add_event_handler("presence_available", lambda p: self.available.add(p["from"].bare))
        client.add_event_handler("presence_unavailable", lambda p: self.available.discard(p["from"].bare))
        client.add_event_handler("vcard_avatar_update",
                                 lambda p: self.avatars.append((p["from"].bare, p["vcard_temp_update"]["photo"])))

    def _message(self, msg) -> None:
        if msg["type"] != "error" and msg["body"]:
            self.bodies.append((msg["from"].bare, msg["body"]))


async def online(pair: Cluster, user: str, node: str | None = None):
    client = await slix_login(pair, user, node=node or PLACEMENT[user], plugins=PLUGINS)
    client.seen = Seen(client)
    await client.get_roster()
    client.send_presence()
    return client


def jid(user: str) -> str:
    return f"{user}@{DOMAIN}"


async def test_caps_time_uptime_and_disco_on_bare_jids(pair):
    gina = await online(pair, "gina")
    try:
        assert "rosterver" in gina.features
        # slixmpp assigns the server's caps only once its own hash of our disco#info
        # (fetched for the node in <c/>) equals the advertised `ver` (XEP-0115 §5.4).
        found: dict[str, object] = {}

        async def verified() -> bool:
            found["ver"] = await gina.plugin["xep_0115"].get_verstring(slixmpp.JID(DOMAIN))
            return bool(found["ver"])

        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while not await verified():
            assert asyncio.get_running_loop().time() < deadline, "slixmpp never validated the server's caps"
            await asyncio.sleep(0.05)
        info = (await gina.plugin["xep_0030"].get_info(jid=DOMAIN))["disco_info"]
        features = set(info["features"])
        assert {"msgoffline", "urn:xmpp:blocking", "vcard-temp", "jabber:iq:last", "urn:xmpp:time"} <= features
        assert found["ver"] == caps.ver([caps.SERVER_IDENTITY], features)

        now = dt.datetime.now(dt.UTC)
        answer = await gina.plugin["xep_0202"].get_entity_time(slixmpp.JID(DOMAIN))
        # slixmpp 1.17's getters cannot parse XEP-0202 §3's own forms ('+00:00', a <utc/>
        # ending in 'Z', as Prosody sends them too): the texts are read here.
        assert answer.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}tzo") == "+00:00"
        utc = dt.datetime.fromisoformat(answer.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}utc"))
        assert abs((utc - now).total_seconds()) < 5
        uptime = (await gina.plugin["xep_0012"].get_last_activity(slixmpp.JID(DOMAIN)))["last_activity"]["seconds"]
        assert 0 <= uptime < 3600

        for account in (jid("gina"), jid("hugo")):  # her own, and one served by n2
            info = (await gina.plugin["xep_0030"].get_info(jid=account))["disco_info"]
            assert ("account", "registered", None, None) in info["identities"], (account, info)
            assert "http://jabber.org/protocol/disco#info" in info["features"]
            assert ("server", "im", None, "presence-ha") not in info["identities"]
    finally:
        await slix_disconnect(gina)


def empty(result) -> bool:
    """An empty roster result (RFC 6121 §2.6.3). slixmpp adds an empty <query/> to the
    result object when its roster handler reads it, so "no items, no version" it is."""
    query = result.xml.find("{jabber:iq:roster}query")
    return query is None or (len(query) == 0 and query.get("ver") is None)


async def test_a_roster_fetch_with_the_current_version_is_empty(pair):
    alice = await slix_login(pair, "alice", plugins=("xep_0030",))
    try:
        first = await alice.get_roster()
        query = first.xml.find("{jabber:iq:roster}query")
        assert query is not None and query.get("ver")
        assert {item.get("jid") for item in query} == {jid("bob"), jid("carol"), jid("dave")}
        assert alice.client_roster.version == query.get("ver")
        again = await alice.get_roster()
        assert again["type"] == "result" and empty(again)
        assert set(alice.client_roster.keys()) >= {jid("bob"), jid("carol"), jid("dave")}  # kept its copy
        before = alice.client_roster.version
        await alice.update_roster(jid("dave"), name="Dave D.", subscription="both")
        await wait_until(lambda: alice.client_roster.version != before, DEADLINE_S, "a push with the new version")
        assert empty(await alice.get_roster())  # the push brought it up to date
        alice.client_roster.version = before
        fourth = (await alice.get_roster()).xml.find("{jabber:iq:roster}query")
        assert fourth is not None and fourth.get("ver") != before
        assert any(item.get("name") == "Dave D." for item in fourth)
    finally:
        await slix_disconnect(alice)


async def test_blocking_stops_delivery_both_ways_across_the_pair(pair):
    alice, bob, carol, dave = [await online(pair, u) for u in ("alice", "bob", "carol", "dave")]
    try:
        await wait_until(lambda: jid("alice") in bob.seen.available, DEADLINE_S, "bob to see alice online")
        await alice.plugin["xep_0191"].block([jid("bob"), jid("carol")])
        assert await alice.plugin["xep_0191"].get_blocked_jids() == {slixmpp.JID(jid("bob")), slixmpp.JID(jid("carol"))}
        await wait_until(lambda: jid("alice") not in bob.seen.available, DEADLINE_S, "bob to see alice go")

        for sender in (bob, carol, dave):
            sender.send_message(mto=jid("alice"), mbody=f"hi from {sender.boundjid.user}", mtype="chat")
        await wait_until(lambda: (jid("dave"), "hi from dave") in alice.seen.bodies, DEADLINE_S, "dave's message")
        for sender in (bob, carol):  # XEP-0191 §3.4: service-unavailable for a blocked sender
            await wait_until(lambda s=sender: s.seen.errors, DEADLINE_S, f"{sender.boundjid} to get an error")
            assert sender.seen.errors[0]["error"]["condition"] == "service-unavailable"
        assert [b for b in alice.seen.bodies if b[0] != jid("dave")] == []

        alice.send_message(mto=jid("bob"), mbody="you will not get this", mtype="chat")
        await wait_until(lambda: alice.seen.errors, DEADLINE_S, "alice's message to bob refused")
        error = alice.seen.errors[0]
        assert error["error"]["condition"] == "not-acceptable"
        assert error.xml.find("{jabber:client}error/{urn:xmpp:blocking:errors}blocked") is not None

        await alice.plugin["xep_0191"].unblock([jid("bob")])
        bob.send_message(mto=jid("alice"), mbody="back again", mtype="chat")
        await wait_until(lambda: (jid("bob"), "back again") in alice.seen.bodies, DEADLINE_S, "bob heard again")
        await wait_until(lambda: jid("alice") in bob.seen.available, DEADLINE_S, "bob to see alice again")
        assert (jid("bob"), "you will not get this") not in bob.seen.bodies
        assert await alice.plugin["xep_0191"].get_blocked_jids() == {slixmpp.JID(jid("carol"))}
    finally:
        for client in (alice, bob, carol, dave):
            await slix_disconnect(client)


async def test_vcard_and_avatar_hash_reach_a_contact_on_the_other_node(pair):
    hugo, gina = await online(pair, "hugo"), await online(pair, "gina")
    try:
        vcard = hugo.plugin["xep_0054"].stanza.VCardTemp()
        vcard["FN"] = "Hugo H."
        await hugo.plugin["xep_0054"].publish_vcard(vcard, jid=slixmpp.JID(jid("hugo")))
        await hugo.plugin["xep_0153"].set_avatar(avatar=AVATAR, mtype="image/png")
        digest = hashlib.sha1(AVATAR).hexdigest()
        await wait_until(lambda: (jid("hugo"), digest) in gina.seen.avatars, DEADLINE_S, "hugo's avatar hash")
        got = (await gina.plugin["xep_0054"].get_vcard(slixmpp.JID(jid("hugo"))))["vcard_temp"]
        assert got["FN"] == "Hugo H." and got["PHOTO"]["BINVAL"] == AVATAR and got["PHOTO"]["TYPE"] == "image/png"
        own = (await hugo.plugin["xep_0054"].get_vcard(slixmpp.JID(jid("hugo"))))["vcard_temp"]
        assert own["FN"] == "Hugo H."
    finally:
        await slix_disconnect(hugo)
        await slix_disconnect(gina)


async def test_last_activity_of_a_contact_who_logged_out(pair):
    ivan, judy, kate = await online(pair, "ivan"), await online(pair, "judy"), await online(pair, "kate")
    try:
        await wait_until(lambda: jid("ivan") in judy.seen.available, DEADLINE_S, "judy to see ivan")
        online_now = await judy.plugin["xep_0012"].get_last_activity(slixmpp.JID(jid("ivan")))
        assert online_now["last_activity"]["seconds"] == 0
        ivan.send_presence(ptype="unavailable", pstatus="gone fishing")
        await wait_until(lambda: jid("ivan") not in judy.seen.available, DEADLINE_S, "judy to see ivan go")
        await slix_disconnect(ivan)
        answer = (await judy.plugin["xep_0012"].get_last_activity(slixmpp.JID(jid("ivan"))))["last_activity"]
        assert 0 <= answer["seconds"] < 60 and answer["status"] == "gone fishing"
        with pytest.raises(slixmpp.exceptions.IqError) as refused:
            await kate.plugin["xep_0012"].get_last_activity(slixmpp.JID(jid("ivan")))
        assert refused.value.iq["error"]["condition"] == "forbidden"
    finally:
        await slix_disconnect(judy)
        await slix_disconnect(kate)


async def test_aioxmpp_blocking_and_vcard_services(pair):
    aioxmpp = pytest.importorskip("aioxmpp")
    from aioxmpp.connector import STARTTLSConnector

    n2 = pair.node("n2")
    olga = aioxmpp.PresenceManagedClient(
        aioxmpp.JID.fromstr(f"{jid('olga')}/aio"), aioxmpp.make_security_layer("olga-pw", no_verify=True),
        override_peer=[(n2.host, n2.client_port, STARTTLSConnector())])
    olga.presence = aioxmpp.PresenceState(True)
    blocking, vcards = olga.summon(aioxmpp.BlockingClient), olga.summon(aioxmpp.vcard.VCardService)
    pete = await online(pair, "pete")
    try:
        async with olga.connected():
            assert blocking.blocklist == frozenset()  # fetched at stream start: the server said it blocks
            await blocking.block_jids([aioxmpp.JID.fromstr(jid("pete"))])
            assert blocking.blocklist == {aioxmpp.JID.fromstr(jid("pete"))}
            card = await vcards.get_vcard()
            card.set_photo_data("image/png", AVATAR)
            await vcards.set_vcard(card)
            pete.send_message(mto=jid("olga"), mbody="anyone?", mtype="chat")
            await wait_until(lambda: pete.seen.errors, DEADLINE_S, "pete's message refused")
            with pytest.raises(slixmpp.exceptions.IqError) as refused:  # his IQs too (XEP-0191 §3.4)
                await pete.plugin["xep_0054"].get_vcard(slixmpp.JID(jid("olga")))
            assert refused.value.iq["error"]["condition"] == "service-unavailable"
            await blocking.unblock_jids([aioxmpp.JID.fromstr(jid("pete"))])
            assert blocking.blocklist == frozenset()
            got = (await pete.plugin["xep_0054"].get_vcard(slixmpp.JID(jid("olga"))))["vcard_temp"]
            assert got["PHOTO"]["BINVAL"] == AVATAR and got["PHOTO"]["TYPE"] == "image/png"
            assert (await vcards.get_vcard(aioxmpp.JID.fromstr(jid("olga")))).get_photo_data() == AVATAR
    finally:
        await slix_disconnect(pete)


async def test_vcard_and_block_list_survive_a_sigkill_failover(pair):
    """Last in the module: n1 stays dead."""
    leo = await online(pair, "leo")
    vcard = leo.plugin["xep_0054"].stanza.VCardTemp()
    vcard["FN"] = "Leo L."
    await leo.plugin["xep_0054"].publish_vcard(vcard, jid=slixmpp.JID(jid("leo")))
    await leo.plugin["xep_0191"].block([jid("mia")])
    await slix_disconnect(leo)

    pair.node("n1").process.send_signal(signal.SIGKILL)
    pair.node("n1").process.wait(10)
    await wait_until(lambda: active_nodes(pair.db_url)["leo"] == "n2", DEADLINE_S, "n2 to take leo over", 0.2)

    leo, mia, nina = await online(pair, "leo", node="n2"), await online(pair, "mia"), await online(pair, "nina")
    try:
        assert await leo.plugin["xep_0191"].get_blocked_jids() == {slixmpp.JID(jid("mia"))}
        assert (await nina.plugin["xep_0054"].get_vcard(slixmpp.JID(jid("leo"))))["vcard_temp"]["FN"] == "Leo L."
        mia.send_message(mto=jid("leo"), mbody="still blocked?", mtype="chat")
        nina.send_message(mto=jid("leo"), mbody="after the failover", mtype="chat")
        await wait_until(lambda: (jid("nina"), "after the failover") in leo.seen.bodies, DEADLINE_S, "nina's message")
        await wait_until(lambda: mia.seen.errors, DEADLINE_S, "mia's message refused")
        assert (jid("mia"), "still blocked?") not in leo.seen.bodies
    finally:
        for client in (leo, mia, nina):
            await slix_disconnect(client)
