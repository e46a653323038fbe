"""Block lists (XEP-0191), vCards (XEP-0054) and last activity (XEP-0012).

Why: what everyday clients keep on the server must survive a failover, a fallback
and a user move, and be the same whichever node of the cluster serves the user: so
it lives in the availability database, not in a node's memory. Three new tables;
nothing existing changes, so `db upgrade` on a populated database only adds them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _user_fk() -> sa.Column:
    return sa.Column("user_id", sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "blocked_jids",
        sa.Column("id", sa.Integer(), nullable=False),
        _user_fk(),
        sa.Column("jid", sa.String(length=3071), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_blocked_jids_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blocked_jids")),
        sa.UniqueConstraint("user_id", "jid", name=op.f("uq_blocked_jids_user_id")),
    )
    op.create_table(
        "vcards",
        _user_fk(),
        sa.Column("vcard", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_vcards_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_vcards")),
    )
    op.create_table(
        "last_activity",
        _user_fk(),
        sa.Column("logout_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_last_activity_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_last_activity")),
    )


def downgrade() -> None:
    op.drop_table("last_activity")
    op.drop_table("vcards")
    op.drop_table("blocked_jids")
