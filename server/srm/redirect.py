"""The stream error for the clients a node lets go (SPEC §8), built from plain values.

Rules of this module:
- Pure: the caller passes the node's name, where its users go now (`RedirectTarget`,
  the HA peer's client address; None without a peer or with HA off) and why the
  clients are let go. The SRM runner only reports the target (`redirect_target()`).
- Let go by the SRM with a peer to go to: `see-other-host` naming the peer's client
  port (RFC 6120 §4.9.3.19). Anything else (no peer, or the admin or a failure
  stopped the service): `system-shutdown`.
"""

from __future__ import annotations

from dataclasses import dataclass

from presence_ha.server.auth import host_port
from presence_ha.server.services import StopCause
from presence_ha.server.xmpp.errors import StreamCondition, StreamError


@dataclass(frozen=True)
class RedirectTarget:
    """The HA peer that serves this node's users when it lets them go."""

    name: str
    host: str
    client_port: int


def redirect_error(node: str, target: RedirectTarget | None, cause: StopCause = StopCause.SRM) -> StreamError:
    """The stream error for the clients `node` lets go (see the module rules)."""
    if target is None or cause is not StopCause.SRM:
        return StreamError(StreamCondition.SYSTEM_SHUTDOWN, f"node {node} stopped serving")
    return StreamError(StreamCondition.SEE_OTHER_HOST, f"served by {target.name} now",
                       other_host=host_port(target.host, target.client_port))
