"""PEP (XEP-0163) through slixmpp's own plugins, on an HA pair, users on both nodes.

Transcript (one pair per backend; alice on n1, bob and carol on n2; alice and bob are
mutual contacts, carol is a stranger):
- bob comes online with caps that want avatar metadata (+notify); n2 learns them.
- alice publishes her avatar (data, then metadata) with xep_0084: bob, on the other
  node, is notified of the metadata and fetches the data; carol may not read it
  (presence access model).
- alice publishes an OMEMO device list with publish-options access_model=open: carol
  reads it; publishing it again with another access model is a precondition conflict.
- disco#info on alice's bare JID shows the pubsub/pep identity.
- bob's second device comes online later and gets alice's last metadata item unasked.
- dave, a contact of alice on n2 using aioxmpp, reads her avatar through aioxmpp's
  AvatarService and her device list through its PubSubClient.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream import ET

from presence_ha.db import roster
from presence_ha.db.models import EntityCaps
from tests.integration.cluster import (  # noqa: F401
    DOMAIN,
    db_call,
    ha_pair_factory,
    slix_disconnect,
    slix_login,
    wait_until,
)

USERS = (("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw"), ("dave", "dave-pw"))
PLACEMENT = {"alice": "n1", "bob": "n2", "carol": "n2", "dave": "n2"}
PEP_PLUGINS = ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0084")
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
NS_AXOLOTL = "eu.siacs.conversations.axolotl"


def known_caps(db_url: str) -> int:
    from sqlalchemy import func, select

    async def read(session):
        return (await session.execute(select(func.count()).select_from(EntityCaps))).scalar_one()

    return db_call(db_url, read)


async def online(cluster, username: str, node: str, resource: str) -> tuple:
    """Logged in with PEP plugins, initial presence sent with caps; (client, events)."""
    client = await slix_login(cluster, username, node=node, resource=resource, plugins=PEP_PLUGINS)
    events: asyncio.Queue = asyncio.Queue()
    client.add_event_handler("avatar_metadata_publish", events.put_nowait)
    await client.plugin["xep_0115"].update_caps()  # the verification string is ready before presence
    client.send_presence()
    return client, events


def open_access() -> Form:
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    form.add_field(var="pubsub#access_model", value="open")
    return form


async def read_with_aioxmpp(cluster, alice_jid: str, picture: bytes) -> None:
    """dave (aioxmpp, on n2): alice's avatar and device list through aioxmpp's own services."""
    import aioxmpp
    import aioxmpp.avatar
    import aioxmpp.pubsub
    from aioxmpp.connector import STARTTLSConnector

    node = cluster.node("n2")
    client = aioxmpp.Client(
        aioxmpp.JID.fromstr(f"dave@{DOMAIN}/aio"), aioxmpp.make_security_layer("dave-pw", no_verify=True),
        override_peer=[(node.host, node.client_port, STARTTLSConnector())])
    avatars = client.summon(aioxmpp.avatar.AvatarService)
    pubsub = client.summon(aioxmpp.pubsub.PubSubClient)
    async with client.connected():
        alice = aioxmpp.JID.fromstr(alice_jid)
        descriptors = await asyncio.wait_for(avatars.get_avatar_metadata(alice), 10)
        assert [d.mime_type for d in descriptors] == ["image/png"]
        assert await asyncio.wait_for(descriptors[0].get_image_bytes(), 10) == picture
        found = await asyncio.wait_for(pubsub.get_items(alice, DEVICELIST), 10)
        (item,) = found.payload.items
        assert item.id_ == "current"


@pytest.mark.timeout(120)
async def test_avatar_and_device_list_across_the_pair(ha_pair_factory, db_url):  # noqa: F811
    cluster = ha_pair_factory(users=USERS, placement=PLACEMENT)
    db_call(db_url, lambda s: roster.befriend(s, DOMAIN, [["alice", "bob"], ["alice", "dave"]]))
    clients = []
    try:
        bob, bob_events = await online(cluster, "bob", "n2", "phone")
        clients.append(bob)
        await wait_until(lambda: known_caps(db_url) >= 1, 10, "n2 learned bob's caps")
        alice, _ = await online(cluster, "alice", "n1", "laptop")
        carol = await slix_login(cluster, "carol", node="n2", plugins=PEP_PLUGINS)
        clients += [alice, carol]

        # alice publishes her avatar; bob, served by the other node, is notified
        picture = b"\x89PNG not really" * 40
        avatar_id = hashlib.sha1(picture).hexdigest()
        await alice.plugin["xep_0084"].publish_avatar(picture)
        await alice.plugin["xep_0084"].publish_avatar_metadata(
            items=[{"id": avatar_id, "type": "image/png", "bytes": len(picture)}])
        event = await asyncio.wait_for(bob_events.get(), 10)
        assert event["from"].bare == cluster.jid("alice")
        assert event["pubsub_event"]["items"]["item"]["id"] == avatar_id
        fetched = await bob.plugin["xep_0084"].retrieve_avatar(cluster.jid("alice"), avatar_id, timeout=10)
        assert fetched["pubsub"]["items"]["item"]["avatar_data"]["value"] == picture

        # presence access model: a stranger may not read it
        with pytest.raises(IqError) as refused:
            await carol.plugin["xep_0084"].retrieve_avatar(cluster.jid("alice"), avatar_id, timeout=10)
        assert refused.value.condition == "not-authorized"

        # an OMEMO device list with the open access model: the stranger reads it
        devices = ET.fromstring(f"<list xmlns='{NS_AXOLOTL}'><device id='4242'/></list>")
        await alice.plugin["xep_0060"].publish(None, DEVICELIST, id="current", payload=devices, options=open_access(),
                                        timeout=10)
        got = await carol.plugin["xep_0060"].get_items(cluster.jid("alice"), DEVICELIST, timeout=10)
        payload = got["pubsub"]["items"]["item"]["payload"]
        assert payload.find(f"{{{NS_AXOLOTL}}}device").get("id") == "4242"
        whitelist = open_access()
        whitelist.field["pubsub#access_model"]["value"] = "whitelist"
        with pytest.raises(IqError) as conflict:  # XEP-0223: publish-options are preconditions
            await alice.plugin["xep_0060"].publish(None, DEVICELIST, id="current", payload=devices, options=whitelist,
                                            timeout=10)
        assert conflict.value.condition == "conflict"

        # the account's bare JID is a PEP service
        info = await bob.plugin["xep_0030"].get_info(jid=cluster.jid("alice"), timeout=10)
        assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
        assert "http://jabber.org/protocol/pubsub#publish-options" in info["disco_info"]["features"]

        # a second device of bob comes online: it gets the last metadata unasked (§4.3.2)
        tablet, tablet_events = await online(cluster, "bob", "n2", "tablet")
        clients.append(tablet)
        event = await asyncio.wait_for(tablet_events.get(), 10)
        assert event["pubsub_event"]["items"]["item"]["id"] == avatar_id

        await read_with_aioxmpp(cluster, alice_jid=cluster.jid("alice"), picture=picture)
    finally:
        for client in clients:
            await slix_disconnect(client)
