"""The cluster CA: one certificate authority per cluster, kept with the cluster.

Why: each node used to present a self-signed certificate of its own, so a client that
failed over to the other node was asked to trust a second certificate. Now one CA per
cluster signs every node's certificate (server.tls); its certificate and key live in
the clusters row beside the cluster secret, because the availability database is what
all nodes of a cluster share. Both columns are NULL until `cluster init` or the first
node start makes the CA.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("ca_cert", sa.Text(), nullable=True))
        batch.add_column(sa.Column("ca_key", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("ca_key")
        batch.drop_column("ca_cert")
