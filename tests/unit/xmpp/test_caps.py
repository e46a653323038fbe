"""XEP-0115 verification strings (`server.xmpp.caps`): the XEP's own example, and the
same hash slixmpp computes for the server's disco#info."""

from __future__ import annotations

import pytest

from presence_ha.server.xmpp import caps


def test_the_simple_example_of_xep_0115_section_5_2():
    identities = [caps.Identity("client", "pc", "Exodus 0.9.1")]
    features = ["http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc", "http://jabber.org/protocol/caps"]
    assert caps.verification_string(identities, features) == (
        "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<"
        "http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<")
    assert caps.ver(identities, features) == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_the_servers_hash_is_the_one_slixmpp_computes():
    slixmpp = pytest.importorskip("slixmpp")
    from slixmpp.plugins.xep_0030.stanza import DiscoInfo

    from presence_ha.server.node import build_router

    features = build_router().disco_features
    info = DiscoInfo()
    info.add_identity(caps.SERVER_IDENTITY.category, caps.SERVER_IDENTITY.type, name=caps.SERVER_IDENTITY.name)
    for var in features:
        info.add_feature(var)
    client = slixmpp.ClientXMPP("a@example.test", "pw")
    client.register_plugin("xep_0115")
    expected = client.plugin["xep_0115"].generate_verstring(info, "sha-1")
    assert caps.ver([caps.SERVER_IDENTITY], features) == expected


def test_the_c_element():
    c = caps.caps_element("abc=")
    assert c.tag == f"{{{caps.NS_CAPS}}}c" and c.attrib == {"hash": "sha-1", "node": caps.NODE, "ver": "abc="}


@pytest.mark.parametrize("ver", ["QgayPKawpkPSDYmwT/WM94uAlu0=", None])
def test_features_after_authentication_offer_roster_versioning_and_caps(ver):
    from tests.unit.xmpp.transcript import Transcript, keys_for

    t = Transcript(caps_ver=ver)
    t.open()
    t.scram_login("alice", "s3cret", keys_for("s3cret"), "SCRAM-SHA-256")
    t.call("accept_login")
    t.sent()
    out = t.open()
    assert "<ver xmlns='urn:xmpp:features:rosterver'/>" in out
    offered = f"<c xmlns='{caps.NS_CAPS}' hash='sha-1' node='{caps.NODE}' ver='{ver}'/>"
    assert (offered in out) is (ver is not None)
