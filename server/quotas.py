"""Per-account quotas (issue #19 item 7): the pure rules and the one exception.

Rules of this module:
- Pure: no I/O. The limits are `config.QuotasConfig` (section `quotas`); the store
  counts what is stored (one indexed count or sum per write that adds something, never
  per read), the features and the client port decide with the functions here.
- `QuotaExceeded(quota, limit)` is what the store raises when a write would go over a
  limit; nothing is written then. The features turn it into the stanza error of
  `CONDITIONS`, which cites the RFC the answer follows:
  - roster items (`roster_max_items`): `not-allowed` (RFC 6121 §2.3.3 lets the server
    refuse a roster set it will not perform; the client may not add more), to a roster
    set, or as a presence error to a subscription stanza that would add an item
    (subscribe, approval of a request, pre-approval);
  - an item's name and groups over `roster_item_max_bytes`: `not-acceptable` (§2.3.3:
    a name or group over a server-configured limit);
  - unanswered inbound subscription requests (`max_pending_subscriptions`):
    `resource-constraint` (type wait), bounced to the requester (RFC 6120 §8.3.3.18);
  - offline storage (`offline_max_messages`, `offline_max_bytes`): the message bounces
    with `service-unavailable` (RFC 6121 §8.5.2.2.1 and XEP-0160 §3: storage full);
  - resources of one account on a node (`max_sessions_per_user`): the bind request
    gets `resource-constraint` (RFC 6120 §7.6.2.1: "the account has reached a limit on
    the number of simultaneous connected resources allowed"); the sessions already
    bound are kept, and binding a resource the account holds already replaces it
    (§7.7.2.1) without counting twice. At the limit, a session that lost its
    connection and awaits XEP-0198 resumption gives its place instead.
- A subscription request kept for redelivery is stored whole only up to
  `MAX_STORED_REQUEST_BYTES`; a larger one (a 256 kB <status/>) is kept as the bare
  request, so 250 pending requests cost at most ~1 MB per account.
"""

from __future__ import annotations

import enum

from presence_ha.server.xmpp.errors import Condition, StanzaError

MAX_STORED_REQUEST_BYTES = 4096


class Quota(enum.Enum):
    ROSTER_ITEMS = "roster_max_items"
    ROSTER_ITEM_BYTES = "roster_item_max_bytes"
    PENDING_SUBSCRIPTIONS = "max_pending_subscriptions"
    OFFLINE_MESSAGES = "offline_max_messages"
    OFFLINE_BYTES = "offline_max_bytes"
    SESSIONS = "max_sessions_per_user"


CONDITIONS = {
    Quota.ROSTER_ITEMS: Condition.NOT_ALLOWED,
    Quota.ROSTER_ITEM_BYTES: Condition.NOT_ACCEPTABLE,
    Quota.PENDING_SUBSCRIPTIONS: Condition.RESOURCE_CONSTRAINT,
    Quota.OFFLINE_MESSAGES: Condition.SERVICE_UNAVAILABLE,
    Quota.OFFLINE_BYTES: Condition.SERVICE_UNAVAILABLE,
    Quota.SESSIONS: Condition.RESOURCE_CONSTRAINT,
}

_TEXTS = {
    Quota.ROSTER_ITEMS: "the roster is full ({limit} items)",
    Quota.ROSTER_ITEM_BYTES: "the item's name and groups exceed {limit} bytes",
    Quota.PENDING_SUBSCRIPTIONS: "too many unanswered subscription requests are waiting ({limit})",
    Quota.OFFLINE_MESSAGES: "offline message storage is full ({limit} messages)",
    Quota.OFFLINE_BYTES: "offline message storage is full ({limit} bytes)",
    Quota.SESSIONS: "the account has reached its limit of {limit} connected resources",
}


class QuotaExceeded(Exception):
    """A write would take an account over `quota` (nothing was written)."""

    def __init__(self, quota: Quota, limit: int) -> None:
        super().__init__(f"{quota.value}: {limit}")
        self.quota = quota
        self.limit = limit

    def stanza_error(self) -> StanzaError:
        return StanzaError(CONDITIONS[self.quota], _TEXTS[self.quota].format(limit=self.limit))


def item_bytes(name: str | None, groups: list[str] | tuple[str, ...]) -> int:
    """What a roster item stores beyond its JID: its name and groups, in UTF-8 bytes."""
    return len((name or "").encode()) + sum(len(g.encode()) for g in groups)


def check_item(name: str | None, groups: list[str] | tuple[str, ...], max_bytes: int) -> None:
    if item_bytes(name, groups) > max_bytes:
        raise QuotaExceeded(Quota.ROSTER_ITEM_BYTES, max_bytes)


class Bind(enum.Enum):
    """What to do with a bind request (`bind_verdict`)."""

    ALLOW = "bind it"
    END_DETACHED = "end one detached session of the account (XEP-0198, awaiting resumption), then bind it"
    REFUSE = "answer resource-constraint"


def bind_verdict(bound_resources: list[str], resource: str, max_sessions: int, detached: int) -> Bind:
    """Binding `resource` for an account holding `bound_resources` on this node,
    `detached` of them connection-less sessions awaiting XEP-0198 resumption.
    Rebinding a held resource replaces that session, so it never counts against the
    limit; at the limit, a detached session gives its place (a phone that lost its
    network and could not resume must not be locked out for the resumption window)."""
    if resource in bound_resources or len(bound_resources) < max_sessions:
        return Bind.ALLOW
    return Bind.END_DETACHED if detached else Bind.REFUSE
