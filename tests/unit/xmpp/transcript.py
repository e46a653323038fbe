"""Helpers to drive the stream core as an XML transcript (SlixTest `recv`/`send` style).

`Transcript.recv(text)` feeds client text; `.sent()` returns everything the server
wrote since the last call as one string; `.facts()` the non-Outgoing events. Keys are
real SCRAM keys derived with scramp, clients are scramp's real `ScramClient`.
"""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass

from scramp import ScramClient, ScramMechanism

from presence_ha.server.xmpp import events as ev
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.stream import StreamSettings, XmppStream

DOMAIN = "example.test"
HEADER = (
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    f" to='{DOMAIN}' version='1.0'>"
)
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


@dataclass(frozen=True)
class Keys:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def keys_for(password: str, mechanism: str = "SCRAM-SHA-256") -> Keys:
    salt, stored, server, iterations = ScramMechanism(mechanism).make_auth_info(password, iteration_count=4096)
    return Keys(salt, iterations, stored, server)


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


class Transcript:
    def __init__(self, tls: bool = True, **settings) -> None:
        settings.setdefault("tls_required", True)
        self.stream = XmppStream(StreamSettings(DOMAIN, **settings), random.Random(7), b"secret", tls_active=tls)
        self._out: list[str] = []
        self._facts: list[ev.Event] = []

    def _collect(self) -> None:
        for event in self.stream.events():
            if isinstance(event, ev.Outgoing):
                self._out.append(event.data.decode())
            else:
                self._facts.append(event)

    def recv(self, text: str | bytes) -> Transcript:
        self.stream.receive_data(text.encode() if isinstance(text, str) else text)
        self._collect()
        return self

    def call(self, method: str, *args) -> Transcript:
        getattr(self.stream, method)(*args)
        self._collect()
        return self

    def sent(self) -> str:
        out, self._out = "".join(self._out), []
        return out

    def facts(self) -> list[ev.Event]:
        facts, self._facts = self._facts, []
        return facts

    # -- scripted negotiation ---------------------------------------------------------
    def open(self) -> str:
        self.recv(HEADER)
        return self.sent()

    def scram_login(self, username: str, password: str, keys: Keys | None, mechanism: str = "SCRAM-SHA-256") -> str:
        """Run a SCRAM exchange with stored `keys`; return the server's last answer."""
        client = ScramClient([mechanism], username, password)
        self.recv(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{b64(client.get_client_first())}</auth>")
        assert self.facts() == [ev.CredentialsRequested(username, mechanism)]
        self.call("credentials_found", keys)
        challenge = re.search(r"<challenge[^>]*>([^<]+)</challenge>", self.sent()).group(1)
        client.set_server_first(base64.b64decode(challenge).decode())
        self.recv(f"<response xmlns='{SASL}'>{b64(client.get_client_final())}</response>")
        return self.sent()

    def login_and_bind(self, resource: str = "phone") -> None:
        self.open()
        self.scram_login("alice", "s3cret", keys_for("s3cret"))
        self.facts()
        self.call("accept_login")
        self.sent()
        self.recv(HEADER)
        self.recv("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        assert self.facts() == [ev.BindRequested(JID.parse(f"alice@{DOMAIN}/{resource}"))]
        self.call("bind_done", None)
        self.sent()
        self.facts()
