"""a worker whose liveness lock is gone is first `lost` (since lost_at), and its runs are handed
out only after a grace period, so that a live worker that lost its connection stops first

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("lost_at", sa.Float(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE workers SET state = 'dead' WHERE state = 'lost'")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("lost_at")
