"""What the stream core tells its host (the connection adapter): facts, in order.

Rules of this module:
- Every output of `server.xmpp.stream.XmppStream` is one of these frozen dataclasses,
  returned in order by `events()`. `Outgoing` carries bytes to write; everything else
  is a fact the adapter reacts to (fetch keys, upgrade TLS, register a session...).
- Events that ask the host for something name the core method that answers them.
- No I/O, no asyncio: this module is shared by the core and the adapter.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from presence_ha.server.xmpp.errors import StreamError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.sasl import SaslCondition


@dataclass(slots=True)  # made per stanza: not frozen (a frozen __init__ costs 3x)
class Outgoing:
    """Bytes to write to the peer, in order."""

    data: bytes


@dataclass(frozen=True)
class TlsRequested:
    """`<proceed/>` was queued: flush it, run the TLS handshake, then `tls_established()`."""


@dataclass(frozen=True)
class CredentialsRequested:
    """Fetch the user's stored SCRAM keys; answer with `credentials_found(keys | None)`."""

    username: str
    mechanism: str


@dataclass(frozen=True)
class DerivationRequested:
    """PLAIN: run `sasl.salted_password(password, salt, iterations)` off the event loop
    (PBKDF2 is CPU-heavy); answer with `password_derived(salted)`."""

    password: bytes = field(repr=False)
    salt: bytes
    iterations: int


@dataclass(frozen=True)
class PasswordVerified:
    """The user proved the password; answer `accept_login()` or `refuse_login(...)`."""

    username: str
    mechanism: str


@dataclass(frozen=True)
class AuthFailed:
    """A SASL attempt failed (the failure element follows as `Outgoing`)."""

    username: str | None
    mechanism: str
    condition: SaslCondition


@dataclass(frozen=True)
class RegistrationRequested:
    """XEP-0077 in-band registration; answer with `registration_done(error | None)`."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BindRequested:
    """The client asks to bind `jid` (RFC 6120 §7); answer with `bind_done(error | None)`
    (an error such as resource-constraint refuses it, and the stream may try again)."""

    jid: JID


@dataclass(frozen=True)
class ResourceBound:
    """The stream is now a session of `jid` (RFC 6120 §7)."""

    jid: JID


@dataclass(frozen=True)
class ResumeRequested:
    """XEP-0198 §5: answer with `resume_accepted(jid, sm)` or `resume_refused()`."""

    previd: str
    h: int


@dataclass(frozen=True)
class SessionResumed:
    """The stream took over the detached session `jid` (stanzas re-sent as Outgoing)."""

    jid: JID


@dataclass(frozen=True)
class StreamManagementEnabled:
    """XEP-0198 is on; `resume_id` is set when the session may be resumed."""

    resume_id: str | None
    max_resume_s: int


@dataclass(frozen=True)
class ClientStateChanged:
    """XEP-0352: the client went active or inactive."""

    active: bool


@dataclass(slots=True)  # made per stanza: not frozen (a frozen __init__ costs 3x)
class StanzaReceived:
    """A stanza from the bound client, for the router."""

    stanza: ET.Element = field(compare=False)


@dataclass(frozen=True)
class StreamClosed:
    """The stream is over (`</stream:stream>` queued); close the connection after writing.

    `error` is the stream error sent, if any; `by_peer` is True when the client closed.
    """

    error: StreamError | None
    by_peer: bool


Event = (
    Outgoing
    | TlsRequested
    | CredentialsRequested
    | DerivationRequested
    | PasswordVerified
    | AuthFailed
    | RegistrationRequested
    | BindRequested
    | ResourceBound
    | ResumeRequested
    | SessionResumed
    | StreamManagementEnabled
    | ClientStateChanged
    | StanzaReceived
    | StreamClosed
)
