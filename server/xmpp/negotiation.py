"""Stream negotiation before a session exists: features, SASL, XEP-0077, resource binding.

Rules of this module:
- Part of the sans-IO stream core (`server.xmpp.stream.XmppStream` inherits
  `Negotiation`); same rules: no I/O, answers from the host come in as method calls.
- Advertise exactly what is implemented (RFC 6120 §4.3.2): STARTTLS (required unless
  configured off), then SCRAM-SHA-256, SCRAM-SHA-1 and, over TLS only, PLAIN (plus
  XEP-0077 registration when the cluster enables it), then bind, the optional RFC 3921
  session, XEP-0198 and XEP-0352, RFC 6121 roster versioning and the server's
  XEP-0115 capabilities (`server.xmpp.caps`).
- Channel binding: over TLS whose `binding` (given by the host with the TLS) offers
  types, SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS come first and the types are listed
  with XEP-0440 (`sasl_channel_binding`); the exchange gets the binding (`sasl` rules).
- SASL failures are RFC 6120 §6.5 conditions; after `max_auth_failures` failures the
  stream ends with `policy-violation` (§6.4.5: a bounded number of retries).
- A server-generated resource is random hex from the injected `random.Random`.
- Binding asks the host first (`BindRequested`, input queued meanwhile): the host may
  refuse it with a stanza error (the account's resource quota, `server.quotas`), and
  the client may then bind again; `bind_done(None)` makes the stream a session.
"""

from __future__ import annotations

import enum
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING

from presence_ha.server.xmpp import sasl
from presence_ha.server.xmpp.caps import caps_element
from presence_ha.server.xmpp.errors import Condition, StanzaError, StreamCondition, StreamError, error_reply
from presence_ha.server.xmpp.events import (
    AuthFailed,
    BindRequested,
    CredentialsRequested,
    DerivationRequested,
    Event,
    Outgoing,
    PasswordVerified,
    RegistrationRequested,
    ResourceBound,
)
from presence_ha.server.xmpp.jid import JID, InvalidJid, prep_localpart, prep_resource
from presence_ha.server.xmpp.stanzas import (
    NS_BIND,
    NS_CSI,
    NS_REGISTER,
    NS_REGISTER_FEATURE,
    NS_SASL,
    NS_SASL_CB,
    NS_SESSION,
    NS_SM,
    NS_STREAM,
    NS_TLS,
    child_text,
    element,
    iq_result,
    to_bytes,
)

if TYPE_CHECKING:
    from presence_ha.server.xmpp.stream import StreamSettings

NS_ROSTERVER = "urn:xmpp:features:rosterver"


class Phase(enum.Enum):
    TLS = "tls"  # STARTTLS required and not done yet
    AUTH = "auth"  # SASL (and XEP-0077 registration) before authentication
    BIND = "bind"  # authenticated; resource binding or XEP-0198 resumption next
    BOUND = "bound"  # a session: stanzas flow to the router
    CLOSED = "closed"


class Waiting(enum.Enum):
    """What the core waits for from its host; input is queued meanwhile."""

    TLS = "tls"
    CREDENTIALS = "credentials"
    DERIVATION = "derivation"  # PLAIN: the host derives SaltedPassword in a worker thread
    LOGIN = "login"
    RESUME = "resume"
    REGISTRATION = "registration"
    BIND = "bind"  # the host checks the account's sessions before the resource is bound


@dataclass(frozen=True)
class SaslFailure:
    """A refusal sent as a SASL `<failure/>` (the stream stays open)."""

    condition: sasl.SaslCondition
    text: str | None = None


def sasl_failure(condition: sasl.SaslCondition, text: str | None = None) -> ET.Element:
    failure = ET.Element(f"{{{NS_SASL}}}failure")
    ET.SubElement(failure, f"{{{NS_SASL}}}{condition.value}")
    if text:
        element_text = ET.SubElement(failure, f"{{{NS_SASL}}}text")
        element_text.text = text
    return failure


def sasl_channel_binding(types: tuple[str, ...]) -> ET.Element:
    """XEP-0440: the channel-binding types the server supports on this connection."""
    listing = ET.Element(f"{{{NS_SASL_CB}}}sasl-channel-binding")
    for cb_type in types:
        ET.SubElement(listing, f"{{{NS_SASL_CB}}}channel-binding", {"type": cb_type})
    return listing


def sm_failed(condition: str) -> ET.Element:
    failed = ET.Element(f"{{{NS_SM}}}failed")
    ET.SubElement(failed, f"{{urn:ietf:params:xml:ns:xmpp-stanzas}}{condition}")
    return failed


def iq_error(iq: ET.Element, error: StanzaError) -> ET.Element:
    reply = error_reply(iq, error)
    reply.attrib.pop("from", None)
    return reply


class Negotiation:
    """SASL, registration and binding handlers of `XmppStream` (see module rules)."""

    settings: StreamSettings
    rng: random.Random
    secret: bytes
    tls_active: bool
    phase: Phase
    waiting: Waiting | None
    jid: JID | None
    binding: sasl.ChannelBinding | None  # the TLS channel bindings, once TLS is on

    def __init__(self) -> None:
        self._exchange: sasl.SaslExchange | None = None
        self._verified: sasl.Verified | None = None
        self.auth_failures = 0
        self._registration_iq: ET.Element | None = None
        self._bind_request: tuple[ET.Element, JID] | None = None  # (bind IQ, full JID) while the host decides

    # provided by XmppStream
    def _emit(self, event: Event) -> None: ...
    def _send(self, elem: ET.Element) -> None: ...
    def _wait(self, what: Waiting) -> None: ...
    def _resume_input(self) -> None: ...
    def _restart(self) -> None: ...
    def close(self, error: StreamError | None = None, by_peer: bool = False) -> None: ...

    # -- features ---------------------------------------------------------------
    def mechanisms(self) -> list[str]:
        offered = list(sasl.SCRAM_MECHANISMS)
        if not self.tls_active:
            return offered
        plus = list(sasl.SCRAM_PLUS_MECHANISMS) if self._binding_types() else []
        return [*plus, *offered, sasl.PLAIN]

    def _binding_types(self) -> tuple[str, ...]:
        return self.binding.types() if self.tls_active and self.binding is not None else ()

    def _features(self) -> ET.Element:
        features = ET.Element(f"{{{NS_STREAM}}}features")
        if self.phase is Phase.TLS:
            starttls = ET.SubElement(features, f"{{{NS_TLS}}}starttls")
            ET.SubElement(starttls, f"{{{NS_TLS}}}required")
        elif self.phase is Phase.AUTH:
            if not self.tls_active:
                ET.SubElement(features, f"{{{NS_TLS}}}starttls")
            mechanisms = ET.SubElement(features, f"{{{NS_SASL}}}mechanisms")
            for name in self.mechanisms():
                mechanisms.append(element(f"{{{NS_SASL}}}mechanism", text=name))
            if types := self._binding_types():
                features.append(sasl_channel_binding(types))
            if self.settings.registration_enabled and self.tls_active:
                ET.SubElement(features, f"{{{NS_REGISTER_FEATURE}}}register")
        elif self.phase is Phase.BIND:
            ET.SubElement(features, f"{{{NS_BIND}}}bind")
            session = ET.SubElement(features, f"{{{NS_SESSION}}}session")
            ET.SubElement(session, f"{{{NS_SESSION}}}optional")
            ET.SubElement(features, f"{{{NS_SM}}}sm")
            ET.SubElement(features, f"{{{NS_CSI}}}csi")
            ET.SubElement(features, f"{{{NS_ROSTERVER}}}ver")  # RFC 6121 §2.6.1
            if self.settings.caps_ver is not None:
                features.append(caps_element(self.settings.caps_ver))  # XEP-0115 §6.3
        return features

    # -- SASL (RFC 6120 §6) -------------------------------------------------------
    def _on_auth(self, elem: ET.Element) -> None:
        mechanism = elem.get("mechanism", "")
        if self._exchange is not None:
            self._fail_auth(None, mechanism, sasl.SaslCondition.MALFORMED_REQUEST, "an exchange is in progress")
            return
        if mechanism not in self.mechanisms():
            condition = (sasl.SaslCondition.ENCRYPTION_REQUIRED if mechanism == sasl.PLAIN
                         else sasl.SaslCondition.INVALID_MECHANISM)
            self._fail_auth(None, mechanism, condition, None)
            return
        nonce = f"{self.rng.getrandbits(192):048x}"
        binding = self.binding if self._binding_types() else None  # -PLUS was offered
        self._exchange = sasl.SaslExchange(mechanism, domain=self.settings.domain, nonce=nonce, secret=self.secret,
                                           binding=binding)
        try:
            payload = sasl.decode_payload(elem.text)
        except ValueError:
            self._fail_auth(None, mechanism, sasl.SaslCondition.INCORRECT_ENCODING, "invalid base64")
            return
        self._apply(self._exchange.start(payload))

    def _on_sasl_response(self, elem: ET.Element) -> None:
        if self._exchange is None:
            self._fail_auth(None, "", sasl.SaslCondition.MALFORMED_REQUEST, "no exchange in progress")
            return
        try:
            payload = sasl.decode_payload(elem.text)
        except ValueError:
            self._fail_auth(None, self._exchange.mechanism, sasl.SaslCondition.INCORRECT_ENCODING, "invalid base64")
            return
        self._apply(self._exchange.respond(payload))

    def _on_sasl_abort(self, _elem: ET.Element) -> None:
        mechanism = self._exchange.mechanism if self._exchange else ""
        self._fail_auth(None, mechanism, sasl.SaslCondition.ABORTED, None)

    def _apply(self, step: sasl.Step) -> None:
        assert self._exchange is not None
        if isinstance(step, sasl.Challenge):
            self._send(element(f"{{{NS_SASL}}}challenge", text=sasl.encode_payload(step.data) if step.data else None))
        elif isinstance(step, sasl.NeedCredentials):
            self._wait(Waiting.CREDENTIALS)
            self._emit(CredentialsRequested(step.username, step.mechanism))
        elif isinstance(step, sasl.NeedDerivation):
            self._wait(Waiting.DERIVATION)
            self._emit(DerivationRequested(step.password, step.salt, step.iterations))
        elif isinstance(step, sasl.Verified):
            self._verified = step
            self._wait(Waiting.LOGIN)
            self._emit(PasswordVerified(step.username, self._exchange.mechanism))
        else:
            self._fail_auth(step.username, self._exchange.mechanism, step.condition, step.text)

    def credentials_found(self, keys: sasl.StoredKeys | None) -> None:
        """Answer to `CredentialsRequested`: the user's keys, or None if unknown."""
        assert self.waiting is Waiting.CREDENTIALS and self._exchange is not None
        self.waiting = None
        self._apply(self._exchange.credentials(keys))
        if self.waiting is None:
            self._resume_input()

    def password_derived(self, salted: bytes) -> None:
        """Answer to `DerivationRequested`: the SaltedPassword of the given password."""
        assert self.waiting is Waiting.DERIVATION and self._exchange is not None
        self.waiting = None
        self._apply(self._exchange.derived(salted))
        if self.waiting is None:
            self._resume_input()

    def credentials_unavailable(self, text: str) -> None:
        """Answer to `CredentialsRequested` when the keys cannot be read (database down)."""
        assert self.waiting is Waiting.CREDENTIALS and self._exchange is not None
        self.waiting = None
        self._exchange = None
        self._send(sasl_failure(sasl.SaslCondition.TEMPORARY_AUTH_FAILURE, text))
        self._resume_input()

    def _fail_auth(self, username: str | None, mechanism: str, condition: sasl.SaslCondition, text: str | None) -> None:
        self._exchange = None
        self.auth_failures += 1
        self._emit(AuthFailed(username, mechanism, condition))
        self._send(sasl_failure(condition, text))
        if condition is not sasl.SaslCondition.ABORTED and self.auth_failures >= self.settings.max_auth_failures:
            self.close(StreamError(StreamCondition.POLICY_VIOLATION, "too many failed authentication attempts"))

    def accept_login(self) -> None:
        """Answer to `PasswordVerified`: this node serves the user; send `<success/>`."""
        assert self.waiting is Waiting.LOGIN and self._verified is not None
        additional = sasl.encode_payload(self._verified.additional)
        self.jid = JID(self._verified.username, self.settings.domain)
        self._emit(Outgoing(to_bytes(element(f"{{{NS_SASL}}}success", text=additional))))
        self.phase = Phase.BIND
        self._exchange = self._verified = None
        self._restart()  # RFC 6120 §6.4.6: the client opens a new stream

    def refuse_login(self, refusal: StreamError | SaslFailure) -> None:
        """Answer to `PasswordVerified`: the user may not log in here (see-other-host...)."""
        assert self.waiting is Waiting.LOGIN
        self._exchange = self._verified = None
        if isinstance(refusal, StreamError):
            self.close(refusal)
            return
        self._send(sasl_failure(refusal.condition, refusal.text))
        self._resume_input()

    # -- XEP-0077 in-band registration (before authentication) ---------------------
    def _on_preauth_iq(self, iq: ET.Element) -> None:
        payload = iq[0] if len(iq) == 1 else None
        if (not self.settings.registration_enabled or not self.tls_active or payload is None
                or payload.tag != f"{{{NS_REGISTER}}}query"):
            self.close(StreamError(StreamCondition.NOT_AUTHORIZED, "authenticate first"))
            return
        if iq.get("type") == "get":
            form = ET.Element(f"{{{NS_REGISTER}}}query")
            form.append(element(f"{{{NS_REGISTER}}}instructions", text="Choose a username and password."))
            ET.SubElement(form, f"{{{NS_REGISTER}}}username")
            ET.SubElement(form, f"{{{NS_REGISTER}}}password")
            self._send(iq_result(iq, form))
        elif iq.get("type") == "set":
            self._register(iq, payload)
        else:
            self._send(iq_error(iq, StanzaError(Condition.BAD_REQUEST)))

    def _register(self, iq: ET.Element, query: ET.Element) -> None:
        username = child_text(query, f"{{{NS_REGISTER}}}username")
        password = child_text(query, f"{{{NS_REGISTER}}}password")
        if query.find(f"{{{NS_REGISTER}}}remove") is not None:
            self._send(iq_error(iq, StanzaError(Condition.NOT_ALLOWED, "log in to remove an account")))
            return
        try:
            username = prep_localpart(username or "")
        except InvalidJid as exc:
            self._send(iq_error(iq, StanzaError(Condition.NOT_ACCEPTABLE, str(exc))))
            return
        if not password:
            self._send(iq_error(iq, StanzaError(Condition.NOT_ACCEPTABLE, "a password is required")))
            return
        self._registration_iq = iq
        self._wait(Waiting.REGISTRATION)
        self._emit(RegistrationRequested(username, password))

    def registration_done(self, error: StanzaError | None) -> None:
        """Answer to `RegistrationRequested`: None if the account was created."""
        assert self.waiting is Waiting.REGISTRATION and self._registration_iq is not None
        iq, self._registration_iq = self._registration_iq, None
        self._send(iq_result(iq) if error is None else iq_error(iq, error))
        self._resume_input()

    # -- resource binding (RFC 6120 §7) --------------------------------------------
    def _on_bind_iq(self, iq: ET.Element) -> None:
        payload = iq[0] if len(iq) == 1 else None
        if iq.get("type") != "set" or payload is None or payload.tag != f"{{{NS_BIND}}}bind":
            self._send(iq_error(iq, StanzaError(Condition.NOT_AUTHORIZED, "bind a resource first")))
            return
        requested = (child_text(payload, f"{{{NS_BIND}}}resource") or "").strip()
        try:
            resource = prep_resource(requested) if requested else f"{self.rng.getrandbits(64):016x}"
        except InvalidJid as exc:
            self._send(iq_error(iq, StanzaError(Condition.BAD_REQUEST, str(exc))))
            return
        assert self.jid is not None
        full = self.jid.with_resource(resource)
        self._bind_request = (iq, full)
        self._wait(Waiting.BIND)
        self._emit(BindRequested(full))

    def bind_done(self, error: StanzaError | None) -> None:
        """Answer to `BindRequested`: None binds the resource, an error refuses it."""
        if self.phase is Phase.CLOSED:
            return  # the stream ended while the host decided
        assert self.waiting is Waiting.BIND and self._bind_request is not None
        (iq, full), self._bind_request = self._bind_request, None
        if error is not None:
            self._send(iq_error(iq, error))
            self._resume_input()
            return
        self.jid = full
        self.phase = Phase.BOUND
        self._emit(ResourceBound(full))
        answer = ET.Element(f"{{{NS_BIND}}}bind")
        answer.append(element(f"{{{NS_BIND}}}jid", text=str(full)))
        self._send(iq_result(iq, answer))
        self._resume_input()


AUTH_ROUTES = {
    f"{{{NS_SASL}}}auth": Negotiation._on_auth,
    f"{{{NS_SASL}}}response": Negotiation._on_sasl_response,
    f"{{{NS_SASL}}}abort": Negotiation._on_sasl_abort,
    "iq": Negotiation._on_preauth_iq,
}
