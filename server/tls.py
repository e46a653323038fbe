"""TLS for client connections: configured PEM files, or a self-signed local default.

Rules of this module:
- With `tls.cert_path`/`tls.key_path` configured, those files are used as they are.
- Otherwise the node uses `<data_dir>/tls/<node>.crt|.key`, generated once
  (cryptography, EC P-256, one year) with the domain, `localhost` and the node's
  host as subject alternative names. Files are written atomically (temp + rename) and
  the key is mode 0600, so two nodes sharing a data dir never see half a file.
- TLS 1.2 is the minimum (RFC 7590 §3.1). No session tickets: XMPP clients keep one
  long connection, so a ticket is rarely used, and minting two per handshake (OpenSSL's
  TLS 1.3 default) was login CPU and bytes; Prosody's default is `no_ticket` too.
- The STARTTLS upgrade itself is `server.net.transport.ClientTransport.start_tls`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = dt.timedelta(days=365)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_self_signed(common_name: str, names: list[str]) -> tuple[bytes, bytes]:
    """A fresh self-signed (certificate PEM, key PEM) for `names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(_san([common_name, *names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def ensure_self_signed(data_dir: Path, node_name: str, domain: str, hosts: list[str]) -> tuple[Path, Path]:
    """The node's self-signed certificate and key paths, generated if missing."""
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = tls_dir / f"{node_name}.crt", tls_dir / f"{node_name}.key"
    if not (cert_path.exists() and key_path.exists()):
        cert_pem, key_pem = make_self_signed(domain, ["localhost", *hosts])
        _write_atomic(key_path, key_pem, 0o600)
        _write_atomic(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def server_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context
