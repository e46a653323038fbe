"""The cluster CA and the node certificates it issues (server.tls), checked with OpenSSL."""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509

from presence_ha.server.tls import ensure_node_certificate, make_ca, server_context


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake in memory: raises ssl.SSLCertVerificationError if the client refuses."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    c.do_handshake()


def _client(ca_pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem)


def test_two_nodes_are_trusted_through_one_ca(tmp_path: Path) -> None:
    ca = make_ca("example.test")
    certs = [ensure_node_certificate(tmp_path, name, "example.test", [host], ca)
             for name, host in (("n1", "127.0.0.1"), ("n2", "198.18.0.2"))]
    for cert, key in certs:
        _handshake(server_context(cert, key), _client(ca[0]), "example.test")
    assert (tmp_path / "tls" / "ca.crt").read_text() == ca[0]
    assert oct((tmp_path / "tls" / "n1.key").stat().st_mode & 0o777) == "0o600"


def test_another_clusters_ca_is_refused(tmp_path: Path) -> None:
    cert, key = ensure_node_certificate(tmp_path, "n1", "example.test", [], make_ca("example.test"))
    try:
        _handshake(server_context(cert, key), _client(make_ca("example.test")[0]), "example.test")
    except ssl.SSLCertVerificationError:
        return
    raise AssertionError("a certificate of another CA was accepted")


def test_the_certificate_names_the_domain_and_the_hosts(tmp_path: Path) -> None:
    cert_path, _ = ensure_node_certificate(tmp_path, "n1", "example.test", ["198.18.0.2", "node1.lan"],
                                           make_ca("example.test"))
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"example.test", "localhost", "node1.lan"}
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["198.18.0.2"]
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=360)


def test_a_certificate_is_kept_until_the_ca_or_the_names_change(tmp_path: Path) -> None:
    ca = make_ca("example.test")
    cert_path, _ = ensure_node_certificate(tmp_path, "n1", "example.test", ["127.0.0.1"], ca)
    first = cert_path.read_bytes()
    ensure_node_certificate(tmp_path, "n1", "example.test", ["127.0.0.1"], ca)
    assert cert_path.read_bytes() == first  # kept
    ensure_node_certificate(tmp_path, "n1", "example.test", ["127.0.0.1", "198.18.0.9"], ca)
    assert cert_path.read_bytes() != first  # a new name: issued again
    second = cert_path.read_bytes()
    other = make_ca("example.test")
    ensure_node_certificate(tmp_path, "n1", "example.test", ["127.0.0.1", "198.18.0.9"], other)
    assert cert_path.read_bytes() != second  # another CA: issued again
    cert, key = cert_path, tmp_path / "tls" / "n1.key"
    _handshake(server_context(cert, key), _client(other[0]), "example.test")
