"""XMPP errors (RFC 6120 §4.9 stream errors, §8.3 stanza errors).

Rules: handlers raise `StanzaError(Condition.X)`; the router turns it into an error
stanza with `error_reply`. Stream-level faults are `StreamError(StreamCondition.X)`,
which the stream core turns into `<stream:error/>` followed by `</stream:stream>`.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


class ErrorType(enum.Enum):
    AUTH = "auth"
    CANCEL = "cancel"
    CONTINUE = "continue"
    MODIFY = "modify"
    WAIT = "wait"


class Condition(enum.Enum):
    """RFC 6120 §8.3.3 stanza error conditions, each with its usual type."""

    BAD_REQUEST = ("bad-request", ErrorType.MODIFY)
    CONFLICT = ("conflict", ErrorType.CANCEL)
    FEATURE_NOT_IMPLEMENTED = ("feature-not-implemented", ErrorType.CANCEL)
    FORBIDDEN = ("forbidden", ErrorType.AUTH)
    GONE = ("gone", ErrorType.CANCEL)
    INTERNAL_SERVER_ERROR = ("internal-server-error", ErrorType.WAIT)
    ITEM_NOT_FOUND = ("item-not-found", ErrorType.CANCEL)
    JID_MALFORMED = ("jid-malformed", ErrorType.MODIFY)
    NOT_ACCEPTABLE = ("not-acceptable", ErrorType.MODIFY)
    NOT_ALLOWED = ("not-allowed", ErrorType.CANCEL)
    NOT_AUTHORIZED = ("not-authorized", ErrorType.AUTH)
    POLICY_VIOLATION = ("policy-violation", ErrorType.MODIFY)
    RECIPIENT_UNAVAILABLE = ("recipient-unavailable", ErrorType.WAIT)
    REDIRECT = ("redirect", ErrorType.MODIFY)
    REGISTRATION_REQUIRED = ("registration-required", ErrorType.AUTH)
    REMOTE_SERVER_NOT_FOUND = ("remote-server-not-found", ErrorType.CANCEL)
    REMOTE_SERVER_TIMEOUT = ("remote-server-timeout", ErrorType.WAIT)
    RESOURCE_CONSTRAINT = ("resource-constraint", ErrorType.WAIT)
    SERVICE_UNAVAILABLE = ("service-unavailable", ErrorType.CANCEL)
    SUBSCRIPTION_REQUIRED = ("subscription-required", ErrorType.AUTH)
    UNDEFINED_CONDITION = ("undefined-condition", ErrorType.CANCEL)
    UNEXPECTED_REQUEST = ("unexpected-request", ErrorType.WAIT)

    @property
    def tag(self) -> str:
        return self.value[0]

    @property
    def default_type(self) -> ErrorType:
        return self.value[1]


class StreamCondition(enum.Enum):
    """RFC 6120 §4.9.3 stream error conditions."""

    BAD_FORMAT = "bad-format"
    BAD_NAMESPACE_PREFIX = "bad-namespace-prefix"
    CONFLICT = "conflict"
    CONNECTION_TIMEOUT = "connection-timeout"
    HOST_GONE = "host-gone"
    HOST_UNKNOWN = "host-unknown"
    IMPROPER_ADDRESSING = "improper-addressing"
    INTERNAL_SERVER_ERROR = "internal-server-error"
    INVALID_FROM = "invalid-from"
    INVALID_NAMESPACE = "invalid-namespace"
    INVALID_XML = "invalid-xml"
    NOT_AUTHORIZED = "not-authorized"
    NOT_WELL_FORMED = "not-well-formed"
    POLICY_VIOLATION = "policy-violation"
    REMOTE_CONNECTION_FAILED = "remote-connection-failed"
    RESET = "reset"
    RESOURCE_CONSTRAINT = "resource-constraint"
    RESTRICTED_XML = "restricted-xml"
    SEE_OTHER_HOST = "see-other-host"
    SYSTEM_SHUTDOWN = "system-shutdown"
    UNDEFINED_CONDITION = "undefined-condition"
    UNSUPPORTED_ENCODING = "unsupported-encoding"
    UNSUPPORTED_FEATURE = "unsupported-feature"
    UNSUPPORTED_STANZA_TYPE = "unsupported-stanza-type"
    UNSUPPORTED_VERSION = "unsupported-version"


class StanzaError(Exception):
    """Raised by a handler: the router answers the stanza with this error."""

    def __init__(
        self,
        condition: Condition,
        text: str | None = None,
        type: ErrorType | None = None,
        app: ET.Element | None = None,
        app_condition: str | None = None,
    ) -> None:
        super().__init__(f"{condition.tag}: {text}" if text else condition.tag)
        self.condition = condition
        self.text = text
        self.type = type or condition.default_type
        self.app = app  # an application-specific condition (RFC 6120 §8.3.2), e.g. XEP-0191's <blocked/>
        self.app_condition = app_condition  # Clark tag of an application condition (RFC 6120 §8.3.3)

    def to_element(self) -> ET.Element:
        error = ET.Element("error", {"type": self.type.value})
        ET.SubElement(error, f"{{{NS_STANZAS}}}{self.condition.tag}")
        if self.text:
            text = ET.SubElement(error, f"{{{NS_STANZAS}}}text")
            text.text = self.text
        if self.app is not None:
            error.append(self.app)
        if self.app_condition:
            ET.SubElement(error, self.app_condition)
        return error


class StreamError(Exception):
    """A fault that ends the stream with `<stream:error/>`."""

    def __init__(self, condition: StreamCondition, text: str | None = None, other_host: str | None = None) -> None:
        super().__init__(f"{condition.value}: {text}" if text else condition.value)
        self.condition = condition
        self.text = text
        self.other_host = other_host  # the element text of see-other-host


def error_reply(stanza: ET.Element, error: StanzaError) -> ET.Element:
    """The error stanza answering `stanza` (RFC 6120 §8.3.1): addresses swapped."""
    reply = ET.Element(stanza.tag, {"type": "error"})
    for src, dst in (("from", "to"), ("to", "from")):
        address = stanza.get(src)
        if address:
            reply.set(dst, address)
    stanza_id = stanza.get("id")
    if stanza_id is not None:
        reply.set("id", stanza_id)
    reply.append(error.to_element())
    return reply
