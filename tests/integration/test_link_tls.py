"""Node links over mutual TLS (issue #17 part 5), with real node processes.

- An HA pair's links (the cluster mesh and the SRM peer link) come up over TLS 1.3: the
  nodes log the protocol of every link that comes up, and a client holding a cluster
  CA certificate sees the node's certificate chain to that CA and name the node.
- Refused, each with one clear warning line in the node's log (who, from where, why),
  while the node keeps running and the pair stays Normal: no client certificate, a
  certificate of a foreign CA, a cluster certificate naming a node that is not a peer,
  a peer that does not speak TLS.
- A node of another cluster (its own database, its own CA) dialing in is refused on
  both sides.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from presence_ha.db import nodes
from presence_ha.server.tls import issue, make_ca

from .cluster import (  # noqa: F401 (fixtures)
    FAST_LIMITS,
    cluster_ca,
    cluster_factory,
    db_call,
    ha_pair_factory,
    ha_states,
    poll_until,
    start_cluster,
)

LOG_DEADLINE_S = 15.0


def _ca(db_url: str) -> tuple[str, str]:
    return cluster_ca(db_url)


def _ports(db_url: str, name: str) -> tuple[int, int]:
    info = db_call(db_url, lambda session: nodes.get_node(session, name))
    return info.ports.link_port, info.ports.srm_port


def _client_context(tmp_path: Path, trust: str, signer: tuple[str, str] | None, node: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=trust)
    if signer is not None:
        cert, key = issue(*signer, node, [], node=node)
        cert_path, key_path = tmp_path / f"{node}-{id(signer)}.crt", tmp_path / f"{node}-{id(signer)}.key"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)
    return context


def _dial(port: int, context: ssl.SSLContext) -> tuple[str | None, dict | None, str]:
    """TLS to a link port: (TLS version, the server's certificate, what happened next)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        version, cert = tls.version(), tls.getpeercert()
        try:
            tls.sendall(b"\x00")
            after = "eof" if tls.recv(1) == b"" else "data"
        except ssl.SSLError as exc:
            after = exc.reason or repr(exc)
        except OSError as exc:
            after = repr(exc)
    return version, cert, after


def _wait_log(node, text: str) -> str:
    poll_until(lambda: text in node.log(), LOG_DEADLINE_S, f"{text!r} in {node.name}'s log")
    return next(line for line in node.log().splitlines() if text in line)


def test_links_run_over_mutual_tls_and_refusals_are_logged(ha_pair_factory, tmp_path):  # noqa: F811
    cluster = ha_pair_factory()
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    for node, peer in ((n1, "n2"), (n2, "n1")):
        poll_until(lambda node=node, peer=peer: sum(
            f"link {node.name} -> {peer} up" in line and "TLSv1.3" in line for line in node.log().splitlines()) >= 4,
            LOG_DEADLINE_S, f"{node.name}'s four links with {peer} up over TLS 1.3 (mesh and SRM, both ways)")
        assert "no TLS)" not in node.log()
    ca = _ca(cluster.db_url)
    link_port, srm_port = _ports(cluster.db_url, "n1")

    for port in (link_port, srm_port):  # a holder of a cluster certificate sees n1's, from the cluster CA
        version, cert, _ = _dial(port, _client_context(tmp_path, ca[0], ca, "n2"))
        assert version == "TLSv1.3"
        assert ("URI", "urn:presence-ha:node:n1") in cert["subjectAltName"]

    _dial(link_port, _client_context(tmp_path, ca[0], None, "nobody"))
    line = _wait_log(n1, "it presented no certificate")
    assert "refused a link from 127.0.0.1:" in line and "WARNING" in line

    _dial(link_port, _client_context(tmp_path, ca[0], make_ca("elsewhere.test"), "n2"))
    line = _wait_log(n1, "not issued by this cluster's CA")
    assert "refused a link from 127.0.0.1:" in line

    _dial(srm_port, _client_context(tmp_path, ca[0], ca, "intruder"))
    line = _wait_log(n1, "names node 'intruder', which is not a peer of this node")
    assert "127.0.0.1:" in line

    with socket.create_connection(("127.0.0.1", link_port), timeout=5) as plain:
        plain.sendall(b"hello, link, in clear" * 10)
        plain.recv(100)
    _wait_log(n1, "it does not speak TLS")

    assert n1.alive() and n2.alive()
    assert ha_states(cluster.db_url) == {"n1": ("Normal", "Normal"), "n2": ("Normal", "Normal")}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_node_of_another_cluster_is_refused(db_url, cluster_factory, tmp_path):  # noqa: F811
    ours = cluster_factory(nodes=2, users=())
    link_port, _ = _ports(ours.db_url, "n1")
    theirs = start_cluster(f"sqlite:///{tmp_path / 'other.sqlite3'}", tmp_path / "other", nodes=2, users=(),
                           sets=(*FAST_LIMITS, f"links.dial=n1=127.0.0.1:{link_port}"))
    try:
        # their n2 dials "n1" at our n1: it refuses our certificate, our n1 sees the handshake broken off
        line = _wait_log(theirs.node("n2"), "link with n1 refused")
        assert f"127.0.0.1:{link_port}" in line and "not issued by this cluster's CA" in line
        _wait_log(ours.node("n1"), "broke off its TLS handshake")
        assert ours.node("n1").alive() and theirs.node("n2").alive()
    finally:
        theirs.stop()
