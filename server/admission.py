"""Whether a new client login is admitted here, and how (pure; SPEC §2, §4, §6, §8).

Rules of this module:
- `decide(samples)` is the one admission decision for a login whose password was
  verified: `Accept`, `Refuse(failure)`, `Backup(spared, relay)` (SPEC §8: this node
  backs the user up; an INACTIVE session must send `<hold/>`, else it is relayed to
  `relay`, the user's node, or, with no relay (see-other-host redirects on, or no
  cluster links), it ends with `spared`: a client that did not ask for the backup
  protocol is never sent see-other-host after bind while its node can be reached)
  or `Relay(node)` (SPEC §2: the session is hosted by the user's active node).
- Samples are read by the adapter (`server.net.c2s`), and only those the decision
  needs: `decide` returns a `Sample` naming the next one to read until it can decide
  (a login served here never reads whether this node is a backup, as before).
- No I/O, no asyncio, no clock; the adapter executes the decision.
- `when_presence_stopped(tag, type)`: what a client's stanza becomes while the
  presence engine is stopped (SPEC §4/§6: no presence, no IM); the same rule for a
  local client (c2s) and a relayed one (`server.cluster.relay`).
- The collaborator Protocols the client port and the relay host take for the SRM's
  login admission (`LoginAdmission`) and for a critical service's on/off state
  (`ServiceSwitch`) live here, below both.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Protocol

from presence_ha.server.xmpp.errors import StreamError
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition


class LoginAdmission(Protocol):
    """The SRM's verdict on a login (`SrmRunner.login_refusal`): None admits it.
    `assigned`: the user's assigned node, when the caller read it during the login
    (omitted: the SRM reads it)."""

    def __call__(self, username: str, assigned: str | None = ..., /) -> Awaitable[SaslFailure | None]: ...


class ServiceSwitch(Protocol):
    """A critical service that is only a gate (`server.services.Switch`)."""

    @property
    def on(self) -> bool: ...


class _Unsampled(enum.Enum):
    UNSAMPLED = "not read yet"


UNSAMPLED = _Unsampled.UNSAMPLED


class Sample(enum.Enum):
    """The next sample `decide` needs."""

    BACKS_UP = "is this node the user's backup"  # server.auth.Accounts.backs_up
    RELAY = "can the user's node host a relayed session"  # server.cluster.relay.RelayDialer.refusal
    SRM = "does the SRM admit the login"  # LoginAdmission


@dataclass(frozen=True)
class Accept:
    pass


@dataclass(frozen=True)
class Refuse:
    failure: StreamError | SaslFailure


@dataclass(frozen=True)
class Backup:
    """SPEC §8: bound INACTIVE until `<hold/>`. A connection whose first stanza is not
    `<hold/>` (a client that does not know the backup protocol) is relayed to `relay`,
    the user's node, when there is one; else it ends with `spared`."""

    spared: StreamError | SaslFailure  # the refusal the login was spared (server.auth.backup_kick)
    relay: str | None = None


@dataclass(frozen=True)
class Relay:
    node: str


Admission = Accept | Refuse | Backup | Relay


@dataclass(frozen=True)
class LoginSamples:
    """What is known of a login. `elsewhere`: the database's refusal for a user this
    node does not serve (None: served here); for a user whose session can be relayed,
    `relay_node` is its node and `elsewhere` the fallback (see-other-host)."""

    elsewhere: StreamError | SaslFailure | None
    relay_node: str | None = None
    relay_text: str = ""  # why, for a relayable user on a node that cannot relay
    can_relay: bool = False  # this node has cluster links
    backs_up: bool | _Unsampled = UNSAMPLED
    relay_refusal: SaslFailure | _Unsampled | None = UNSAMPLED
    srm_refusal: SaslFailure | _Unsampled | None = UNSAMPLED

    def with_sample(self, sample: Sample, value: bool | SaslFailure | None) -> LoginSamples:
        if sample is Sample.BACKS_UP:
            return replace(self, backs_up=bool(value))
        assert not isinstance(value, bool), sample
        if sample is Sample.RELAY:
            return replace(self, relay_refusal=value)
        return replace(self, srm_refusal=value)


def decide(s: LoginSamples) -> Admission | Sample:
    if s.elsewhere is None and s.relay_node is None:  # served here: the SRM's state decides (SPEC §6)
        if s.srm_refusal is UNSAMPLED:
            return Sample.SRM
        return Accept() if s.srm_refusal is None else Refuse(s.srm_refusal)
    if s.backs_up is UNSAMPLED:
        return Sample.BACKS_UP
    spared = s.elsewhere if s.elsewhere is not None else _cannot_relay(s)  # (relayable: the fallback)
    if s.backs_up:  # SPEC §8 inactive bind; relayed instead if it turns out not to be a backup connection
        return Backup(spared, s.relay_node if s.can_relay else None)
    if s.relay_node is None:
        return Refuse(spared)
    if not s.can_relay:  # a node without cluster links cannot relay
        return Refuse(_cannot_relay(s))
    if s.relay_refusal is UNSAMPLED:
        return Sample.RELAY
    return Relay(s.relay_node) if s.relay_refusal is None else Refuse(s.relay_refusal)


def _cannot_relay(s: LoginSamples) -> SaslFailure:
    return SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, s.relay_text)


class Gate(enum.Enum):
    """What a client's stanza becomes while the presence engine is stopped."""

    PASS = "routed as usual"
    DROP = "dropped"
    BOUNCE = "answered with service-unavailable"


def when_presence_stopped(tag: str, stanza_type: str | None) -> Gate:
    if tag == "message":
        return Gate.DROP if stanza_type == "error" else Gate.BOUNCE
    return Gate.DROP if tag == "presence" else Gate.PASS
