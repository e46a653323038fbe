"""The one narrow view of the node that features get (Prosody's moduleapi).

Rules: a feature module touches the server only through `FeatureContext`: the domain
and node name, settings, the data-access facade `store`, `metrics`, the read-only
`sessions`, and `deliver()` / `notify()` through the router. No feature imports
`server.net`, `sqlalchemy` or another feature's internals.

`store`, `metrics` and `settings` are typed by the Protocols below: exactly what
features and the services under them (`server.messaging`, `server.presence_service`,
`server.activation`) use. `server.store.Store`, `server.metrics.Metrics` and the
node's settings satisfy them; tests may pass anything that does.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from presence_ha.db.roster import RosterRow
    from presence_ha.server.archive_store import ArchiveStore
    from presence_ha.server.config import QuotasConfig
    from presence_ha.server.pep_store import PepStore
    from presence_ha.server.router import Router
    from presence_ha.server.sessions import Session, SessionRegistry
    from presence_ha.server.store import BackupProfile, StoredPresence, SubscriptionState, SubscriptionUpdate
    from presence_ha.server.xmpp.jid import JID
    from presence_ha.server.xmpp.stanzas import Subscription


class FeatureStore(Protocol):
    """The data access features and services use (`server.store.Store`); each call is
    one transaction and may raise `DatabaseUnavailable`."""

    async def user_exists(self, user: JID) -> bool: ...

    # PEP (XEP-0163) and the message archive (XEP-0313): their own facades
    @property
    def pep(self) -> PepStore: ...
    @property
    def archive(self) -> ArchiveStore: ...

    # rosters and subscriptions (RFC 6121 §2, §3)
    async def roster(self, user: JID) -> list[RosterRow]: ...
    async def roster_item(self, user: JID, contact: JID) -> RosterRow | None: ...
    async def set_roster_item(self, user: JID, contact: JID, name: str | None, groups: Iterable[str]) -> RosterRow: ...
    async def remove_roster_item(self, user: JID, contact: JID) -> SubscriptionState | None: ...
    async def contacts(self, user: JID, subscriptions: Iterable[Subscription]) -> list[JID]: ...
    async def subscription_of(self, user: JID, contact: JID) -> Subscription | None: ...
    async def update_subscription(
        self, user: JID, contact: JID, change: Callable[[SubscriptionState], SubscriptionState],
        request: ET.Element | None = None,
    ) -> SubscriptionUpdate: ...
    async def pending_requests(self, user: JID) -> list[ET.Element]: ...

    # block lists (XEP-0191): `blocked` cached with the roster, `blocked_now` None when not cached
    async def blocked(self, user: JID) -> frozenset[str]: ...
    def blocked_now(self, user: JID) -> frozenset[str] | None: ...
    async def block_list(self, user: JID) -> list[str]: ...
    async def block(self, user: JID, jids: Iterable[str]) -> list[str]: ...
    async def unblock(self, user: JID, jids: Iterable[str] | None) -> list[str]: ...

    # vCards (XEP-0054) and last logouts (XEP-0012)
    async def vcard(self, user: JID) -> ET.Element | None: ...
    async def set_vcard(self, user: JID, vcard: ET.Element) -> None: ...
    async def record_logout(self, user: JID, at: dt.datetime, status: str) -> None: ...
    async def last_logout(self, user: JID) -> tuple[dt.datetime, str] | None: ...

    # offline messages (RFC 6121 §8.5.2.2)
    async def store_offline(self, user: JID, stanza: ET.Element) -> bool: ...
    async def pop_offline(self, user: JID) -> list[ET.Element]: ...

    # shared presence records
    async def put_presence(self, full: JID, priority: int, stanza: ET.Element) -> None: ...
    async def delete_presence(self, full: JID) -> None: ...
    async def presences(self, user: JID) -> list[StoredPresence]: ...
    async def presences_of(self, usernames: set[str]) -> dict[tuple[str, str], StoredPresence]: ...
    async def retire_orphans(self, writer: str, keep: set[tuple[str, str]]) -> list[JID]: ...

    # HA dual connections (SPEC §8)
    async def active_node(self, user: JID) -> str | None: ...
    async def nodes_of(self, usernames: set[str]) -> dict[str, str | None]: ...
    async def usernames_active_on(self, node: str) -> set[str]: ...
    async def backup_profile(self) -> BackupProfile: ...


class Counter(Protocol):
    def inc(self) -> None: ...


class FeatureMetrics(Protocol):
    """The metrics the router counts for features (`server.metrics.Metrics`)."""

    @property
    def handler_errors(self) -> Counter: ...


class FeatureSettings(Protocol):
    """The settings features read (the node's `NodeSettings`)."""

    @property
    def quotas(self) -> QuotasConfig: ...  # per-account limits (the store enforces the stored ones)


@dataclass
class FeatureContext:
    domain: str
    node_name: str
    router: Router
    sessions: SessionRegistry
    store: FeatureStore
    metrics: FeatureMetrics
    settings: FeatureSettings

    async def deliver(self, stanza: ET.Element, sender: Session | None = None) -> None:
        """Route `stanza` to its `to` address with the full delivery rules."""
        await self.router.deliver(self, stanza, sender=sender)

    async def notify(self, event: object) -> None:
        await self.router.notify(self, event)
