"""TLS for client connections and node links: certificates of the cluster's own CA.

Rules of this module:
- With `tls.cert_path`/`tls.key_path` configured, those files are used as they are
  (an ACME or enterprise certificate for the domain).
- Otherwise every node of a cluster presents a certificate of one cluster CA, so a
  client trusts one certificate (`presence-ha cluster ca`) whichever node it reaches,
  before and after a failover. The CA (EC P-256, ten years) is made once per cluster
  and kept in the availability database beside the cluster secret (`db.clusters`,
  its private key sealed with the cluster key),
  because that database is all the nodes of a cluster share, on one host or many.
- A node issues its own certificate from that CA (one year) for the domain (what
  XMPP clients verify, RFC 6120 §13.7.2.1), `localhost`, its host and the service
  address, and keeps it in `<data_dir>/tls/<node>.crt|.key` with the CA beside it as
  `ca.crt`. It issues a new one when the CA changed, a name is missing, or less than
  thirty days remain. Files are written atomically (temp + rename) and keys are mode
  0600 in a 0700 `tls/` directory, so two nodes sharing a data dir never see half a
  file and nobody else reads a key. The CA's private key is kept sealed in the
  database (`server.cluster_key`); in clear it lives only in the node's memory.
- TLS 1.2 is the minimum (RFC 7590 §3.1). No session tickets: XMPP clients keep one
  long connection, so a ticket is rarely used, and minting two per handshake (OpenSSL's
  TLS 1.3 default) was login CPU and bytes; Prosody's default is `no_ticket` too.
- The STARTTLS upgrade itself is `server.net.transport.ClientTransport.start_tls`.
- Node links (`link_tls`): each node also has a link certificate from the cluster CA,
  `<data_dir>/tls/<node>.link.crt|.key`, always (a configured client certificate plays
  no part), whose subject is the node name and whose URI name is
  `urn:presence-ha:node:<node>` (`server.link.secure`), for both TLS server and client
  use. Both contexts are TLS 1.3 only, require the peer's certificate, and trust the
  cluster CA alone; the node name is checked by the link endpoint, not as a host name
  (nodes move between addresses; their names do not).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from presence_ha.server.link.secure import NODE_URI, LinkTls

VALIDITY = dt.timedelta(days=365)
CA_VALIDITY = dt.timedelta(days=3650)
RENEW_BEFORE = dt.timedelta(days=30)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
             validity: dt.timedelta) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + validity))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(domain: str) -> tuple[str, str]:
    """A fresh cluster CA: (certificate PEM, key PEM), as text for the database."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"presence-ha cluster CA for {domain}")
    cert = (_builder(subject, subject, key.public_key(), CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode()


def issue(ca_cert_pem: str, ca_key_pem: str, common_name: str, names: list[str], *,
          node: str | None = None) -> tuple[bytes, bytes]:
    """A certificate for `names`, signed by the CA: (certificate PEM, key PEM). With
    `node`: a node link certificate (URI name `urn:presence-ha:node:<node>`, usable as
    TLS server and client)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "the cluster CA key is EC P-256"
    key = ec.generate_private_key(ec.SECP256R1())
    san = _san([common_name, *names])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if node is not None:
        san = x509.SubjectAlternativeName([*san, x509.UniformResourceIdentifier(NODE_URI + node)])
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    cert = (_builder(_name(common_name), ca_cert.subject, key.public_key(), VALIDITY)
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _still_good(cert_path: Path, ca_cert_pem: str, names: list[str]) -> bool:
    """Whether the certificate on disk was issued by this CA, names `names`, and is not near its end."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_cert_pem.encode())
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    present |= {str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)}
    remaining = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return set(names) <= present and remaining > RENEW_BEFORE


def ensure_node_certificate(data_dir: Path, node_name: str, domain: str, hosts: list[str],
                            ca: tuple[str, str]) -> tuple[Path, Path]:
    """The node's certificate from the cluster CA (issued if missing or stale), and its key."""
    tls_dir = _private_dir(data_dir / "tls")
    ca_cert_pem, ca_key_pem = ca
    cert_path, key_path = tls_dir / f"{node_name}.crt", tls_dir / f"{node_name}.key"
    names = list(dict.fromkeys([domain, "localhost", *hosts]))
    if not (key_path.exists() and _still_good(cert_path, ca_cert_pem, names)):
        cert_pem, key_pem = issue(ca_cert_pem, ca_key_pem, domain, names)
        _write_atomic(key_path, key_pem, 0o600)
        _write_atomic(cert_path, cert_pem + ca_cert_pem.encode(), 0o644)  # the chain: leaf, then the CA
    _write_atomic(tls_dir / "ca.crt", ca_cert_pem.encode(), 0o644)
    return cert_path, key_path


def ensure_link_certificate(data_dir: Path, node_name: str, ca: tuple[str, str]) -> tuple[Path, Path]:
    """The node's link certificate from the cluster CA (issued if missing or stale), and its key."""
    tls_dir = _private_dir(data_dir / "tls")
    ca_cert_pem, ca_key_pem = ca
    cert_path, key_path = tls_dir / f"{node_name}.link.crt", tls_dir / f"{node_name}.link.key"
    if not (key_path.exists() and _still_good(cert_path, ca_cert_pem, [node_name, NODE_URI + node_name])):
        cert_pem, key_pem = issue(ca_cert_pem, ca_key_pem, node_name, [], node=node_name)
        _write_atomic(key_path, key_pem, 0o600)
        _write_atomic(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def link_tls(cert_path: str | Path, key_path: str | Path, ca_cert_pem: str) -> LinkTls:
    """The node links' TLS: 1.3 only, mutual, trusting the cluster CA alone."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # the node name is checked instead (server.link.secure)
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(str(cert_path), str(key_path))
        context.load_verify_locations(cadata=ca_cert_pem)
        context.options |= ssl.OP_NO_TICKET
    server.num_tickets = 0
    return LinkTls(server, client)


def _private_dir(path: Path) -> Path:
    """`path` made if missing, and 0700 (an older version made it 0755)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


ALPN_XMPP_CLIENT = "xmpp-client"  # XEP-0368 §3


def server_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    """The client connections' TLS, for STARTTLS and XEP-0368 direct TLS alike (ALPN
    "xmpp-client" is selected when a client offers it; a client offering none is served)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols([ALPN_XMPP_CLIENT])
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context
