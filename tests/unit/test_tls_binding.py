"""tls-exporter (RFC 9266) from the node's `ssl` connection equals pyOpenSSL's exporter of the peer."""

from __future__ import annotations

import contextlib
import ssl

import pytest
from OpenSSL import SSL

from presence_ha.server import tls
from presence_ha.server.tls_binding import TLS_EXPORTER, TLS_UNIQUE, TlsBinding


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> ssl.SSLContext:
    ca = tls.make_ca("example.test")
    cert, key = tls.issue(*ca, "example.test", ["localhost"])
    directory = tmp_path_factory.mktemp("tls")
    (directory / "c.pem").write_bytes(cert + ca[0].encode())
    (directory / "k.pem").write_bytes(key)
    return tls.server_context(directory / "c.pem", directory / "k.pem")


def handshake(context: ssl.SSLContext, version: int) -> tuple[ssl.SSLObject, SSL.Connection]:
    """A node-side `ssl.SSLObject` and a pyOpenSSL client, over memory BIOs."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_max_proto_version(version)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(incoming, outgoing, server_side=True)
    for _ in range(10):
        for step in (client.do_handshake, server.do_handshake):
            with contextlib.suppress(SSL.WantReadError, ssl.SSLWantReadError):
                step()
        with contextlib.suppress(SSL.WantReadError):
            incoming.write(client.bio_read(65536))
        if data := outgoing.read():
            client.bio_write(data)
    return server, client


def test_tls13_offers_the_exporter_of_rfc_9266(context):
    server, client = handshake(context, SSL.TLS1_3_VERSION)
    binding = TlsBinding(server)
    assert server.version() == "TLSv1.3" and binding.types() == (TLS_EXPORTER,)
    assert binding.data(TLS_EXPORTER) == client.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
    assert binding.data(TLS_UNIQUE) is None  # undefined for TLS 1.3


def test_tls12_offers_tls_unique(context):
    server, client = handshake(context, SSL.TLS1_2_VERSION)
    binding = TlsBinding(server)
    assert server.version() == "TLSv1.2" and binding.types() == (TLS_UNIQUE,)
    assert binding.data(TLS_UNIQUE) == client.get_finished()  # RFC 5929 §3.1: the client's Finished
    assert binding.data(TLS_EXPORTER) is None


def test_no_binding_before_the_handshake(context):
    server = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert TlsBinding(server).types() == ()
