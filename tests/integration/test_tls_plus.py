"""XEP-0368 direct TLS and SCRAM-*-PLUS (RFC 9266 tls-exporter, XEP-0440) on a real node.

Scenario: one node (SQLite) with `tls.direct_port` set; every client trusts the cluster CA.
- slixmpp, allowed direct TLS only (no STARTTLS, no plaintext), logs in on the direct
  TLS port and exchanges a message with a STARTTLS slixmpp on the client port; with
  -PLUS offered it falls back to SCRAM without binding (its Python has no tls-exporter).
- Our SCRAM client (`loadtest.scram`) over pyOpenSSL, whose exporter comes from its own
  OpenSSL build (not the node's ctypes call): SCRAM-SHA-256-PLUS with tls-exporter logs
  in over direct TLS and over STARTTLS; -SHA-1-PLUS too; wrong channel-binding data is
  `not-authorized`; the gs2 flag `y` is `not-authorized` where -PLUS was offered.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import time
import xml.etree.ElementTree as ET

import pytest
import slixmpp
from OpenSSL import SSL

from presence_ha.loadtest.scram import SaltedPasswords, ScramExchange
from tests.integration.cluster import DOMAIN, FAST_LIMITS, free_ports, start_cluster

pytestmark = pytest.mark.timeout(120)

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>")
DEADLINE_S = 20.0
USERS = (("alice", "alice-pw"), ("bob", "bob-pw"))


@pytest.fixture
def node(sqlite_url, tmp_path):
    """SQLite only: channel binding and the direct TLS port do not touch the database."""
    (direct,) = free_ports(1)
    cluster = start_cluster(sqlite_url, tmp_path / "c", nodes=1, users=USERS,
                            sets=(*FAST_LIMITS, f"tls.direct_port={direct}"))
    try:
        yield cluster, cluster.node("n1"), direct
    finally:
        cluster.stop()


class Raw:
    """A blocking XMPP client over pyOpenSSL: direct TLS or STARTTLS, then SASL by hand."""

    def __init__(self, port: int, cafile: str, *, direct: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        self.sock.settimeout(None)  # pyOpenSSL wants a blocking socket (the test has a timeout)
        self.buffer = b""
        self.tls: SSL.Connection | None = None
        self.cafile = cafile
        if direct:
            self._handshake()
        self.features = self.open()
        if not direct:
            self.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            self.expect(rb"<proceed[^>]*/>")
            self._handshake()
            self.features = self.open()

    def _handshake(self) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(self.cafile)
        context.set_verify(SSL.VERIFY_PEER)
        context.set_alpn_protos([b"xmpp-client"])
        tls = SSL.Connection(context, self.sock)
        tls.set_tlsext_host_name(DOMAIN.encode())
        tls.set_connect_state()
        tls.do_handshake()
        assert tls.get_alpn_proto_negotiated() == b"xmpp-client"  # XEP-0368 §3
        self.tls, self.buffer = tls, b""

    def exporter(self) -> bytes:
        assert self.tls is not None
        return self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")

    def send(self, data: bytes) -> None:
        (self.tls or self.sock).sendall(data)

    def expect(self, pattern: bytes) -> re.Match[bytes]:
        deadline = time.monotonic() + DEADLINE_S
        while (match := re.search(pattern, self.buffer, re.S)) is None:
            assert time.monotonic() < deadline, f"no {pattern!r} in {self.buffer!r}"
            chunk = (self.tls or self.sock).recv(65536)
            assert chunk, f"connection closed; got {self.buffer!r}"
            self.buffer += chunk
        self.buffer = self.buffer[match.end():]
        return match

    def open(self) -> bytes:
        self.send(HEADER.encode())
        return self.expect(rb"<stream:features.*?</stream:features>").group(0)

    def mechanisms(self) -> list[str]:
        return re.findall(r"<mechanism>([^<]+)</mechanism>", self.features.decode())

    def sasl(self, scram: ScramExchange) -> bytes:
        """Run the exchange; the server's final answer (`<success/>` or `<failure/>`)."""
        first = base64.b64encode(scram.first().encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='{scram.mechanism}'>{first}</auth>".encode())
        answer = self.expect(rb"<(challenge|failure)\b[^>]*?(/>|>.*?</\1>)").group(0)
        if answer.startswith(b"<failure"):
            return answer
        server_first = base64.b64decode(ET.fromstring(answer).text or "").decode()
        final = base64.b64encode(scram.final(server_first).encode()).decode()
        self.send(f"<response xmlns='{NS_SASL}'>{final}</response>".encode())
        answer = self.expect(rb"<(success|failure)\b[^>]*?(/>|>.*?</\1>)").group(0)
        if answer.startswith(b"<success"):
            scram.check(base64.b64decode(ET.fromstring(answer).text or "").decode())
        return answer

    def close(self) -> None:
        self.sock.close()


def exchange(mechanism: str, **kwargs) -> ScramExchange:
    return ScramExchange(mechanism, "alice", "alice-pw", "c" * 24, SaltedPasswords(), **kwargs)


def test_scram_plus_with_tls_exporter(node):
    cluster, n1, direct = node
    cafile = str(cluster.data_dir / "tls" / "ca.crt")
    for port, is_direct, mechanism in ((direct, True, "SCRAM-SHA-256-PLUS"), (n1.client_port, False,
                                                                              "SCRAM-SHA-256-PLUS"),
                                       (direct, True, "SCRAM-SHA-1-PLUS")):
        client = Raw(port, cafile, direct=is_direct)
        try:
            assert b"starttls" not in client.features  # TLS is on already
            assert client.mechanisms()[:2] == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]
            assert b"<channel-binding type=\"tls-exporter\"" in client.features.replace(b"'", b'"')
            assert b"urn:xmpp:sasl-cb:0" in client.features
            answer = client.sasl(exchange(mechanism, cb_type="tls-exporter", cb_data=client.exporter()))
            assert answer.startswith(b"<success"), answer
        finally:
            client.close()


def test_wrong_binding_data_and_downgrade_are_refused(node):
    cluster, _n1, direct = node
    cafile = str(cluster.data_dir / "tls" / "ca.crt")
    client = Raw(direct, cafile, direct=True)
    try:
        answer = client.sasl(exchange("SCRAM-SHA-256-PLUS", cb_type="tls-exporter", cb_data=bytes(32)))
        assert b"<not-authorized" in answer and b"channel binding" in answer, answer
        # 'y': the client supports binding but thinks the server does not -> downgrade
        answer = client.sasl(exchange("SCRAM-SHA-256", gs2_flag="y"))
        assert b"<not-authorized" in answer, answer
    finally:
        client.close()
    client = Raw(direct, cafile, direct=True)  # the same user still logs in (n,,: no binding)
    try:
        assert client.sasl(exchange("SCRAM-SHA-256")).startswith(b"<success")
    finally:
        client.close()


class Slix(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, cafile: str, *, direct_only: bool) -> None:
        super().__init__(jid, password)
        self.ssl_context = ssl.create_default_context(cafile=cafile)
        self.ssl_context.set_alpn_protocols(["xmpp-client"])  # slixmpp's own context offers it too
        if direct_only:  # XEP-0368 only: a STARTTLS or plaintext fallback would not count
            self.enable_starttls = self.enable_plaintext = False
        self.ready = asyncio.Event()
        self.got: list[str] = []
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", lambda m: self.got.append(m["body"]))

    async def _start(self, _event) -> None:
        self.send_presence()
        self.ready.set()


async def test_slixmpp_logs_in_over_direct_tls(node):
    cluster, n1, direct = node
    cafile = str(cluster.data_dir / "tls" / "ca.crt")
    alice = Slix(cluster.jid("alice"), "alice-pw", cafile, direct_only=True)
    bob = Slix(cluster.jid("bob"), "bob-pw", cafile, direct_only=False)
    try:
        alice.connect("127.0.0.1", direct)
        bob.connect("127.0.0.1", n1.client_port)
        await asyncio.wait_for(asyncio.gather(alice.ready.wait(), bob.ready.wait()), DEADLINE_S)
        assert isinstance(alice.socket, ssl.SSLObject | ssl.SSLSocket)
        assert alice.socket.selected_alpn_protocol() == "xmpp-client"
        alice.send_message(mto=cluster.jid("bob"), mbody="over direct TLS")
        deadline = time.monotonic() + DEADLINE_S
        while "over direct TLS" not in bob.got:
            assert time.monotonic() < deadline, bob.got
            await asyncio.sleep(0.05)
    finally:
        for client in (alice, bob):
            client.disconnect()
        await asyncio.sleep(0.2)
