"""Link status reports the adapters give to the upper layer (pure data).

Rules of this module:
- Facts, named as such. `on_up` gets `LinkUp` or `PeerRestarted`; `on_down` gets one
  of the `LinkDown` members, once per lost link and once per failed attempt.
- `PeerRefused` (the port refuses: the peer process is gone) and `PeerSilent` (no
  bytes for the dead-link timeout) stay distinct: the SRM takes over at once on the
  first and waits for its heartbeat timeout on the second (SPEC §9).
- `peer_name` is None only for a server-side connection that failed before the peer
  named itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkUp:
    peer_name: str
    peer_session_id: bytes


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """Link up with a new process of a known peer (its session id changed)."""

    peer_name: str
    peer_session_id: bytes


@dataclass(frozen=True, slots=True)
class PeerRefused:
    peer_name: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class PeerSilent:
    peer_name: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class PeerClosed:
    peer_name: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """Connecting failed for another network reason (no route, DNS, reset)."""

    peer_name: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class LinkRejected:
    """The handshake or the protocol failed: wrong secret, wrong name, bad frame, TLS."""

    peer_name: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class LinkCrashed:
    """A local callback raised; the connection was reset (the error is logged)."""

    peer_name: str | None
    reason: str


LinkStatus = LinkUp | PeerRestarted
LinkDown = PeerRefused | PeerSilent | PeerClosed | PeerUnreachable | LinkRejected | LinkCrashed
