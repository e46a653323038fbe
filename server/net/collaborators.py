"""What the client port and its connections need of the cluster (typed Protocols).

Rules of this module:
- The client port takes these at construction (`ClientPort(..., relay=, hosted=,
  replicas=)`); a node without cluster links passes None and its port neither relays,
  hosts relayed sessions nor resumes replicated ones.
- They name only what `server.net` calls; the implementations live in
  `server.cluster` (`relay.RelayDialer`, `relay.HostedSessions`,
  `sm_mirror.SmReplication`), which net never imports.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import StreamError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sm import StreamManagement


class RelayConnection(Protocol):
    """What the relay dialer needs of a c2s connection."""

    def send_stanza(self, stanza: ET.Element) -> None: ...
    def kick_soon(self, error: StreamError | None) -> None: ...
    async def become_local(self) -> Session | None:
        """Its user is served here now (a takeover): a local session on the same stream."""
        ...

    def replay(self, stanza: ET.Element) -> None:
        """Handle `stanza` as if just received (its relay's host never acknowledged it)."""
        ...


class RelayedStream(Protocol):
    """The dialled node's handle on one relayed connection."""

    async def forward(self, stanza: ET.Element) -> None: ...
    async def finish(self, graceful: bool) -> None: ...


class Relay(Protocol):
    """Opens sessions of users served by another node (`server.cluster.relay.RelayDialer`)."""

    def refusal(self, username: str, node: str) -> SaslFailure | None: ...
    async def open(self, connection: RelayConnection, jid: JID, node: str) -> RelayedStream | StreamError: ...


class Hosted(Protocol):
    """Sessions this node hosts for clients of other nodes (`server.cluster.relay.HostedSessions`)."""

    async def close_sessions(self, chosen: Callable[[Session], bool],
                             error_for: Callable[[str], StreamError | None]) -> int: ...


class Restored(Protocol):
    """A session rebuilt from its replica, not bound yet."""

    @property
    def session(self) -> Session: ...

    @property
    def sm(self) -> StreamManagement: ...

    def activate(self) -> Coroutine[Any, Any, None]:
        """Once bound: turn it active; returns its announcement, to run after <resumed/>."""
        ...


class Replicas(Protocol):
    """XEP-0198 sessions copied to and from the backup node (`server.cluster.sm_mirror`)."""

    def track(self, rid: str, session: Session, sm: StreamManagement) -> None: ...
    def untrack(self, rid: str | None) -> None: ...
    async def restore(self, previd: str, jid: JID | None, h: int) -> Restored | None: ...
