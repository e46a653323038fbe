"""The availability database: one SQLAlchemy metadata for every table.

Rules of this module:
- It declares tables only; every query lives in a `db/<aggregate>.py` module.
- One `MetaData` with a naming convention, so Alembic names constraints the same way
  on SQLite and PostgreSQL.
- Secrets are never stored in the clear: users have SCRAM salted keys only
  (RFC 5802: salt, iteration count, StoredKey, ServerKey per hash); the cluster secret
  and the CA's private key are sealed with the cluster key, a file outside the
  database (`server.cluster_key`).
- Closed value sets (subscription, HA state) are stored as their display strings and
  validated by the code that writes them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Base(DeclarativeBase):
    metadata = metadata


class Cluster(Base):
    """A cluster: one XMPP domain served by all of its nodes."""

    __tablename__ = "clusters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    domain: Mapped[str] = mapped_column(String(255))
    # Shared secret of the node-to-node and SRM links and the admin RPC token seed,
    # sealed with the cluster key ("sealed1:...", server.cluster_key). Stored here because
    # every node reads the same database (SPEC §1).
    secret: Mapped[str] = mapped_column(String(128))
    # The cluster's CA, which signs every node's certificates (server.tls): the
    # certificate PEM, and the private key PEM sealed like the secret. NULL until the
    # first node or `cluster init` makes it.
    ca_cert: Mapped[str | None] = mapped_column(Text, nullable=True)
    ca_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = _now()


class RedundancyGroup(Base):
    """A presence redundancy group (SPEC §1, §3): one node or a pair."""

    __tablename__ = "redundancy_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(128), default="")
    ha_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Fencing epoch: every user move compares and sets it (SPEC §9, STYLE §3).
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = _now()


class Node(Base):
    """One node process and the addresses it listens on."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128), unique=True)
    software_version: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255), default="127.0.0.1")
    client_port: Mapped[int] = mapped_column(Integer)
    srm_port: Mapped[int] = mapped_column(Integer)
    admin_port: Mapped[int] = mapped_column(Integer)
    link_port: Mapped[int] = mapped_column(Integer)
    metrics_port: Mapped[int] = mapped_column(Integer)
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("redundancy_groups.id", ondelete="SET NULL"), nullable=True
    )
    # 1 or 2: the first node of a group is the Active-Standby primary (SPEC §2).
    group_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = _now()


class Parameter(Base):
    """A service or enterprise parameter set away from its default (SPEC §2, §5).

    `node_id` is NULL for cluster scope. Values are text, typed by `db.parameters`.
    """

    __tablename__ = "parameters"
    __table_args__ = (UniqueConstraint("cluster_id", "node_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    node_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # "service" or "enterprise"
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(255))


class User(Base):
    """A user of the cluster's domain: home (assigned) node and serving (active) node."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("cluster_id", "username"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(255), index=True)
    assigned_node_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True, index=True
    )
    active_node_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True, index=True
    )
    created_at: Mapped[dt.datetime] = _now()


class UserCredential(Base):
    """SCRAM keys of one user for one hash (RFC 5802 §3); never a password."""

    __tablename__ = "user_credentials"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    mechanism: Mapped[str] = mapped_column(String(32), primary_key=True)  # SCRAM-SHA-256
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    iterations: Mapped[int] = mapped_column(Integer)
    stored_key: Mapped[bytes] = mapped_column(LargeBinary)
    server_key: Mapped[bytes] = mapped_column(LargeBinary)


class RosterItem(Base):
    """One contact on a user's roster (RFC 6121 §2, subscription states §3)."""

    __tablename__ = "roster_items"
    __table_args__ = (UniqueConstraint("user_id", "contact_jid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    contact_jid: Mapped[str] = mapped_column(String(3071))
    name: Mapped[str | None] = mapped_column(String(1023), nullable=True)
    subscription: Mapped[str] = mapped_column(String(8), default="none")  # none|to|from|both
    ask_subscribe: Mapped[bool] = mapped_column(Boolean, default=False)  # pending out
    approved: Mapped[bool] = mapped_column(Boolean, default=False)  # pre-approval
    groups: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of names


class PendingSubscription(Base):
    """An inbound subscription request not yet answered (RFC 6121 §3.1.3)."""

    __tablename__ = "pending_subscriptions"
    __table_args__ = (UniqueConstraint("user_id", "from_jid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    from_jid: Mapped[str] = mapped_column(String(3071))
    stanza: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()


class OfflineMessage(Base):
    """A message stored for a user with no available resource (RFC 6121 §8.5.2)."""

    __tablename__ = "offline_messages"
    # The quota check of each stored message counts and sums a user's rows from this
    # index alone (db.offline), without reading the stored stanzas.
    __table_args__ = (Index("ix_offline_messages_user_id_bytes", "user_id", "bytes"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    stanza: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(Integer, server_default="0")  # UTF-8 size of `stanza` (quota)
    created_at: Mapped[dt.datetime] = _now()


class PresenceRecord(Base):
    """The last available presence of one resource, shared by all nodes.

    Lets any node answer probes and lets a backup re-announce a user after a failover.
    """

    __tablename__ = "presence_records"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    resource: Mapped[str] = mapped_column(String(1023), primary_key=True)
    node_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True
    )
    priority: Mapped[int] = mapped_column(Integer, default=0)
    stanza: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = _now()


class NodeHaState(Base):
    """The SRM state of one node (SPEC §6), its fencing epoch and DB liveness."""

    __tablename__ = "node_ha_states"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(64), default="Initializing")
    reason: Mapped[str] = mapped_column(String(64), default="Initialization")
    since: Mapped[dt.datetime] = _now()
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    # Renewed by the node while it can reach the database (SPEC §9: a link fault is
    # not a node fault).
    alive_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class HaEvent(Base):
    """The HA event log: one row per SRM transition."""

    __tablename__ = "ha_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = _now()
    from_state: Mapped[str] = mapped_column(String(64))
    to_state: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(255))


class BlockedJid(Base):
    """One entry of a user's block list (XEP-0191): a JID, bare JID or domain."""

    __tablename__ = "blocked_jids"
    __table_args__ = (UniqueConstraint("user_id", "jid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    jid: Mapped[str] = mapped_column(String(3071))


class VCard(Base):
    """A user's vCard (XEP-0054), as the serialized <vCard/> the user set."""

    __tablename__ = "vcards"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    vcard: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = _now()


class LastActivity(Base):
    """When a user's last available resource went unavailable, and its status (XEP-0012)."""

    __tablename__ = "last_activity"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    logout_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(Text, default="")


# --- PEP (XEP-0163) and the message archive (XEP-0313) ----------------------------------
# Kept in the availability database like every feature's data, so they survive failover,
# fallback and user moves and read the same on every node of the cluster.


class PepNode(Base):
    """One PEP node of an account (XEP-0163) and the configuration it was made with."""

    __tablename__ = "pep_nodes"
    __table_args__ = (UniqueConstraint("user_id", "node"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(1023))
    access_model: Mapped[str] = mapped_column(String(16), default="presence")  # presence|open|whitelist
    max_items: Mapped[int] = mapped_column(Integer, default=1)
    send_last: Mapped[bool] = mapped_column(Boolean, default=True)  # send_last_published_item


class PepItem(Base):
    """A published item of a PEP node; the newest has the highest id."""

    __tablename__ = "pep_items"
    __table_args__ = (UniqueConstraint("node_id", "item_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("pep_nodes.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(1023))
    payload: Mapped[str] = mapped_column(Text)
    published_at: Mapped[dt.datetime] = _now()


class EntityCaps(Base):
    """The features behind a verified XEP-0115 hash: global, as a hash names one feature set."""

    __tablename__ = "entity_caps"

    ver: Mapped[str] = mapped_column(String(255), primary_key=True)  # "<hash>:<ver>"
    features: Mapped[str] = mapped_column(Text)  # newline-separated


class ArchivedMessage(Base):
    """One message of a user's archive (XEP-0313); `stanza_id` is its XEP-0359 id."""

    __tablename__ = "archived_messages"
    __table_args__ = (UniqueConstraint("user_id", "stanza_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    stanza_id: Mapped[str] = mapped_column(String(64))
    peer: Mapped[str] = mapped_column(String(3071))  # the other party's bare JID
    outgoing: Mapped[bool] = mapped_column(Boolean)
    stamp: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    stanza: Mapped[str] = mapped_column(Text)


class ArchivePrefs(Base):
    """A user's archiving preferences (XEP-0313 §6); no row: the default, always."""

    __tablename__ = "archive_prefs"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    default: Mapped[str] = mapped_column(String(8), default="always")  # always|never|roster
    always: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of bare JIDs
    never: Mapped[str] = mapped_column(Text, default="[]")
