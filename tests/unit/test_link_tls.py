"""Node link certificates and the link TLS contexts (server.tls, server.link.secure),
with in-memory OpenSSL handshakes: mutual, TLS 1.3, the cluster CA only, the node name read back."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from presence_ha.server.link.secure import handshake_refusal, identity_refusal, node_of
from presence_ha.server.tls import ensure_link_certificate, link_tls, make_ca


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends of an in-memory handshake, finished (TLS 1.3: the server checks the
    client's certificate last, so both ends run until neither has anything to say)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    s.do_handshake()
    c.do_handshake()
    return c, s


def test_two_nodes_authenticate_each_other_and_read_the_peer_name(tmp_path: Path) -> None:
    ca = make_ca("example.test")
    n1 = link_tls(*ensure_link_certificate(tmp_path, "n1", ca), ca[0])
    n2 = link_tls(*ensure_link_certificate(tmp_path, "n2", ca), ca[0])
    client, server = _handshake(n2.server, n1.client)
    assert client.version() == server.version() == "TLSv1.3"
    assert node_of(client.getpeercert()) == "n2" and node_of(server.getpeercert()) == "n1"
    assert oct((tmp_path / "tls" / "n1.link.key").stat().st_mode & 0o777) == "0o600"


def test_the_link_certificate_is_kept_while_good(tmp_path: Path) -> None:
    ca = make_ca("example.test")
    first = ensure_link_certificate(tmp_path, "n1", ca)[0].read_bytes()
    assert ensure_link_certificate(tmp_path, "n1", ca)[0].read_bytes() == first
    assert ensure_link_certificate(tmp_path, "n1", make_ca("example.test"))[0].read_bytes() != first  # a new CA


def test_a_certificate_of_another_cluster_is_refused_by_the_server(tmp_path: Path) -> None:
    ours, theirs = make_ca("example.test"), make_ca("example.test")
    server = link_tls(*ensure_link_certificate(tmp_path, "n1", ours), ours[0]).server
    (tmp_path / "other").mkdir()
    foreign = link_tls(*ensure_link_certificate(tmp_path / "other", "n2", theirs), ours[0]).client  # trusts ours
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        _handshake(server, foreign)
    assert "not issued by this cluster's CA" in handshake_refusal(caught.value)


def test_a_client_without_certificate_is_refused(tmp_path: Path) -> None:
    ca = make_ca("example.test")
    server = link_tls(*ensure_link_certificate(tmp_path, "n1", ca), ca[0]).server
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=ca[0])
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(server, bare)
    assert handshake_refusal(caught.value) == "it presented no certificate (links need one from the cluster CA)"


def test_identity_rules() -> None:
    assert identity_refusal("n2", "n2", None) is None
    assert identity_refusal("n2", None, frozenset({"n2"})) is None
    assert identity_refusal("n3", "n2", None) == "its certificate names node 'n3', not 'n2'"
    assert identity_refusal("n3", None, frozenset({"n2"})) == (
        "its certificate names node 'n3', which is not a peer of this node")
    assert identity_refusal(None, "n2", None) == "its certificate names no node (not a presence-ha link certificate)"
    assert node_of({"subjectAltName": (("DNS", "n1"), ("URI", "urn:presence-ha:node:n1"))}) == "n1"
    assert node_of({"subjectAltName": (("DNS", "n1"),)}) is None and node_of(None) is None
