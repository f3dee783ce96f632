"""events: the transactional outbox, written with the change that causes each event

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(200)),
        sa.Column("type", sa.String(60), nullable=False),
        sa.Column("occurred_at", sa.Float(), nullable=False),
        sa.Column("subject", sa.String(250), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("events_position", "events", ["txid", "id"])
    op.create_index("events_tenant", "events", ["tenant", "txid", "id"])
    op.create_index("events_type", "events", ["tenant", "type", "txid", "id"])
    op.create_index("events_occurred", "events", ["occurred_at"])


def downgrade() -> None:
    op.drop_table("events")
