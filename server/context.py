"""The one narrow view of the node that features get (Prosody's moduleapi).

Rules: a feature module touches the server only through `FeatureContext`: the domain
and node name, settings, the data-access facade `store`, `metrics`, the read-only
`sessions`, and `deliver()` / `notify()` through the router. No feature imports
`server.net`, `sqlalchemy` or another feature's internals.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presence_ha.server.router import Router
    from presence_ha.server.sessions import Session, SessionRegistry


@dataclass
class FeatureContext:
    domain: str
    node_name: str
    router: Router
    sessions: SessionRegistry
    store: Any  # data-access facade (server.store.Store); typed loosely to keep features DB-free
    metrics: Any  # server.metrics.Metrics
    settings: Any  # node + cluster settings (server.config)

    async def deliver(self, stanza: ET.Element, sender: Session | None = None) -> None:
        """Route `stanza` to its `to` address with the full delivery rules."""
        await self.router.deliver(self, stanza, sender=sender)

    async def notify(self, event: object) -> None:
        await self.router.notify(self, event)
