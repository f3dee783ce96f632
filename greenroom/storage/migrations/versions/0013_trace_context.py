"""trace context: the W3C traceparent a run was created under, and the one an event was
written under, so that attempts, steps and webhook deliveries join the creating request's trace

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("runs", "events"):
        op.add_column(table, sa.Column("trace_parent", sa.String(55), nullable=True))


def downgrade() -> None:
    for table in ("events", "runs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("trace_parent")
