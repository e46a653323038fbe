"""PEP nodes and items, entity caps, and the per-user message archive.

Why: issue #20 asks every feature's data to live in the availability database so that
it survives failover, fallback and user moves and reads the same on every node. PEP
(XEP-0163) keeps nodes and items per account; the XEP-0115 hash -> features cache is
global (a verified hash names one feature set); MAM (XEP-0313) keeps one archive row
per user and message with its XEP-0359 stanza id, and the archiving preferences.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pep_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("access_model", sa.String(length=16), nullable=False),
        sa.Column("max_items", sa.Integer(), nullable=False),
        sa.Column("send_last", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_pep_nodes_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pep_nodes")),
        sa.UniqueConstraint("user_id", "node", name=op.f("uq_pep_nodes_user_id")),
    )
    op.create_table(
        "pep_items",
        sa.Column("id", _ID, nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(length=1023), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["pep_nodes.id"], name=op.f("fk_pep_items_node_id_pep_nodes"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pep_items")),
        sa.UniqueConstraint("node_id", "item_id", name=op.f("uq_pep_items_node_id")),
    )
    op.create_index(op.f("ix_pep_items_node_id"), "pep_items", ["node_id"], unique=False)
    op.create_table(
        "entity_caps",
        sa.Column("ver", sa.String(length=255), nullable=False),
        sa.Column("features", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("ver", name=op.f("pk_entity_caps")),
    )
    op.create_table(
        "archived_messages",
        sa.Column("id", _ID, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("stanza_id", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=3071), nullable=False),
        sa.Column("outgoing", sa.Boolean(), nullable=False),
        sa.Column("stamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_archived_messages_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archived_messages")),
        sa.UniqueConstraint("user_id", "stanza_id", name=op.f("uq_archived_messages_user_id")),
    )
    op.create_index(op.f("ix_archived_messages_user_id"), "archived_messages", ["user_id"], unique=False)
    op.create_table(
        "archive_prefs",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("default", sa.String(length=8), nullable=False),
        sa.Column("always", sa.Text(), nullable=False),
        sa.Column("never", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_archive_prefs_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_archive_prefs")),
    )


def downgrade() -> None:
    op.drop_table("archive_prefs")
    op.drop_index(op.f("ix_archived_messages_user_id"), table_name="archived_messages")
    op.drop_table("archived_messages")
    op.drop_table("entity_caps")
    op.drop_index(op.f("ix_pep_items_node_id"), table_name="pep_items")
    op.drop_table("pep_items")
    op.drop_table("pep_nodes")
