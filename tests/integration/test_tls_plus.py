"""XEP-0368 direct TLS and SCRAM-*-PLUS (RFC 9266 tls-exporter, XEP-0440) on a real node.

Scenario: one node (SQLite) with `tls.direct_port` set; every client trusts the cluster CA.
- slixmpp, allowed direct TLS only (no STARTTLS, no plaintext), logs in on the direct
  TLS port and exchanges a message with a STARTTLS slixmpp on the client port; with
  -PLUS offered it falls back to SCRAM without binding (its Python has no tls-exporter).
- Our SCRAM client (`loadtest.scram`) over pyOpenSSL, whose exporter comes from its own
  OpenSSL build (not the node's ctypes call): SCRAM-SHA-256-PLUS with tls-exporter logs
  in over direct TLS and over STARTTLS; -SHA-1-PLUS too; over TLS 1.2 -PLUS binds with
  tls-unique; wrong channel-binding data is `not-authorized`; the gs2 flag `y` is
  `not-authorized` where -PLUS was offered.
- GNU SASL's `gsasl` (Debian package gsasl, libgsasl 2.2), an independent SCRAM-PLUS
  implementation, computes the SCRAM messages from the tls-exporter data of the
  connection (its stdin/stdout mode: the test relays its messages over the connection)
  and logs in with SCRAM-SHA-256-PLUS; it checks the server's signature and exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
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
USERS = (("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw"))
# The failing logins come from another loopback address as another user, so the login
# throttle (per address and per user) slows no other test of the module.
FAILING_FROM = "127.0.0.2"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for the module; SQLite only: channel binding and the direct TLS port do
    not touch the database."""
    directory = tmp_path_factory.mktemp("tls_plus")
    (direct,) = free_ports(1)
    cluster = start_cluster(f"sqlite:///{directory / 'presence-ha.sqlite3'}", directory / "c", nodes=1, users=USERS,
                            sets=(*FAST_LIMITS, f"tls.direct_port={direct}"))
    try:
        yield cluster, cluster.node("n1"), direct
    finally:
        cluster.stop()


class Raw:
    """A blocking XMPP client over pyOpenSSL: direct TLS or STARTTLS, then SASL by hand."""

    def __init__(self, port: int, cafile: str, *, direct: bool, max_version: int = SSL.TLS1_3_VERSION,
                 source: str = "127.0.0.1") -> None:
        self.max_version = max_version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S, source_address=(source, 0))
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
        context.set_max_proto_version(self.max_version)
        tls = SSL.Connection(context, self.sock)
        tls.set_tlsext_host_name(DOMAIN.encode())
        tls.set_connect_state()
        tls.do_handshake()
        assert tls.get_alpn_proto_negotiated() == b"xmpp-client"  # XEP-0368 §3
        self.tls, self.buffer = tls, b""

    def tls_unique(self) -> bytes:
        assert self.tls is not None
        return self.tls.get_finished()  # RFC 5929 §3.1: the first Finished, the client's

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


def exchange(mechanism: str, user: str = "alice", **kwargs) -> ScramExchange:
    return ScramExchange(mechanism, user, f"{user}-pw", "c" * 24, SaltedPasswords(), **kwargs)


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


def test_tls12_binds_with_tls_unique(node):
    cluster, _n1, direct = node
    client = Raw(direct, str(cluster.data_dir / "tls" / "ca.crt"), direct=True, max_version=SSL.TLS1_2_VERSION)
    try:
        assert b"<channel-binding type='tls-unique'/>" in client.features
        answer = client.sasl(exchange("SCRAM-SHA-256-PLUS", cb_type="tls-unique", cb_data=client.tls_unique()))
        assert answer.startswith(b"<success"), answer
    finally:
        client.close()


class Gsasl:
    """GNU SASL's command-line client in its stdin/stdout mode (`--quiet`): it asks for
    the base64 channel-binding data, then prints each message and reads each answer."""

    def __init__(self, mechanism: str, username: str, password: str) -> None:
        # stdbuf: its stdio would hold a prompt back in a pipe until it exits
        self.process = subprocess.Popen(
            ["stdbuf", "-oL", "gsasl", "--quiet", "--client", "-m", mechanism, "-a", username, "-p", password],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self.buffer = b""

    def tell(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(base64.b64encode(data) + b"\n")

    def message(self) -> bytes:
        """The next message it prints (the last base64 word of a line)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + DEADLINE_S
        while True:
            line, newline, rest = self.buffer.partition(b"\n")
            if newline:
                self.buffer = rest
                if match := re.search(rb"(?:^|\s)([A-Za-z0-9+/]{8,}={0,2})$", line):
                    return base64.b64decode(match.group(1))
                continue
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"gsasl printed nothing more after {self.buffer!r}"
            chunk = os.read(self.process.stdout.fileno(), 4096)
            assert chunk, f"gsasl ended: {self.process.stderr.read() if self.process.stderr else ''}"
            self.buffer += chunk

    def close(self) -> int:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=DEADLINE_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.mark.skipif(shutil.which("gsasl") is None or shutil.which("stdbuf") is None,
                    reason="GNU SASL's gsasl is not installed (apt-get install gsasl)")
def test_gnu_sasl_logs_in_with_scram_sha_256_plus_over_tls_exporter(node):
    cluster, _n1, direct = node
    client = Raw(direct, str(cluster.data_dir / "tls" / "ca.crt"), direct=True)
    gsasl = Gsasl("SCRAM-SHA-256-PLUS", "alice", "alice-pw")
    try:
        gsasl.tell(client.exporter())
        first = gsasl.message()
        assert first.startswith(b"p=tls-exporter,,n=alice,r="), first  # gsasl's own gs2 header
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256-PLUS'>"
                    f"{base64.b64encode(first).decode()}</auth>".encode())
        challenge = client.expect(rb"<challenge[^>]*>([^<]*)</challenge>").group(1)
        gsasl.tell(base64.b64decode(challenge))
        final = gsasl.message()
        client.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</response>".encode())
        answer = client.expect(rb"<(success|failure)\b[^>]*?(/>|>.*?</\1>)").group(0)
        assert answer.startswith(b"<success"), answer
        gsasl.tell(base64.b64decode(ET.fromstring(answer).text or ""))  # it checks the server's signature...
        gsasl.tell(b"")  # ...and then wants an empty line: then it is done (a bad signature: exit 1)
        code = gsasl.close()
        assert code == 0, (code, gsasl.buffer, gsasl.process.stderr.read() if gsasl.process.stderr else b"")
    finally:
        client.close()
        gsasl.close()


def test_wrong_binding_data_and_downgrade_are_refused(node):
    cluster, _n1, direct = node
    cafile = str(cluster.data_dir / "tls" / "ca.crt")
    client = Raw(direct, cafile, direct=True, source=FAILING_FROM)
    try:
        answer = client.sasl(exchange("SCRAM-SHA-256-PLUS", "carol", cb_type="tls-exporter", cb_data=bytes(32)))
        assert b"<not-authorized" in answer and b"channel binding" in answer, answer
        # 'y': the client supports binding but thinks the server does not -> downgrade
        answer = client.sasl(exchange("SCRAM-SHA-256", "carol", gs2_flag="y"))
        assert b"<not-authorized" in answer, answer
    finally:
        client.close()
    client = Raw(direct, cafile, direct=True, source=FAILING_FROM)  # carol still logs in (n,,: no binding)
    try:
        assert client.sasl(exchange("SCRAM-SHA-256", "carol")).startswith(b"<success")
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
