"""Authenticated, reliable node-to-node links (stanza link and SRM heartbeat link).

Layout: `frames.py` (wire format), `state.py` (per-peer state across reconnects),
`protocol.py` (the sans-IO core), `backoff.py`, `status.py` (up/down facts) and
`connection.py` (the asyncio adapter: `LinkServer`, `LinkClient`).
"""

from presence_ha.server.link.connection import LinkClient, LinkClosed, LinkOptions, LinkServer
from presence_ha.server.link.frames import Kind
from presence_ha.server.link.protocol import (
    AckReceived,
    FrameReceived,
    HandshakeComplete,
    LinkConnection,
    ProtocolFailed,
    Role,
)
from presence_ha.server.link.state import LinkConfig, LocalProtocolError, PeerLinks
from presence_ha.server.link.status import (
    LinkCrashed,
    LinkRejected,
    LinkUp,
    PeerClosed,
    PeerRefused,
    PeerRestarted,
    PeerSilent,
    PeerUnreachable,
)

__all__ = [
    "AckReceived", "FrameReceived", "HandshakeComplete", "Kind", "LinkClient", "LinkClosed",
    "LinkConfig", "LinkConnection", "LinkCrashed", "LinkOptions", "LinkRejected", "LinkServer",
    "LinkUp", "LocalProtocolError", "PeerClosed", "PeerLinks", "PeerRefused", "PeerRestarted",
    "PeerSilent", "PeerUnreachable", "ProtocolFailed", "Role",
]
