"""Offline messages carry their size, for the per-user offline storage quota.

Why: an account could be sent 200 offline messages of 256 kB each (issue #19 item 7).
The node now refuses a message that would take the user's stored bytes over
`quotas.offline_max_bytes`; to check that on every stored message without reading the
stored stanzas, each row keeps its UTF-8 size in `bytes`, and the index on
`(user_id, bytes)` (replacing the one on `user_id` alone) answers the count and the sum
by itself. Rows stored before this revision get their size in characters (what both
backends' `length` returns), close enough for a quota.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("offline_messages") as batch:
        batch.add_column(sa.Column("bytes", sa.Integer(), server_default="0", nullable=False))
    op.execute("UPDATE offline_messages SET bytes = length(stanza)")
    with op.batch_alter_table("offline_messages") as batch:
        batch.drop_index("ix_offline_messages_user_id")
        batch.create_index("ix_offline_messages_user_id_bytes", ["user_id", "bytes"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("offline_messages") as batch:
        batch.drop_index("ix_offline_messages_user_id_bytes")
        batch.create_index("ix_offline_messages_user_id", ["user_id"], unique=False)
        batch.drop_column("bytes")
