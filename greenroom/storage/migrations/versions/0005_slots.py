"""slots: a running run records whether it holds a slot of its queue's and its tenant's
concurrency limit, so its end gives back exactly what its claim took

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("holds_queue_slot", "holds_tenant_slot"):
        op.add_column(
            "runs",
            sa.Column(column, sa.Boolean(), nullable=False, server_default=sa.text("false")),
        )
    # Running runs of limited queues and tenants hold their slots; the counts are taken again.
    op.execute(
        "UPDATE runs SET holds_queue_slot = true WHERE state = 'running'"
        " AND queue IN (SELECT name FROM queues WHERE concurrency IS NOT NULL)"
    )
    op.execute(
        "UPDATE runs SET holds_tenant_slot = true WHERE state = 'running'"
        " AND tenant IN (SELECT name FROM tenants WHERE concurrency IS NOT NULL)"
    )
    op.execute(
        "UPDATE queues SET active = (SELECT COUNT(*) FROM runs"
        " WHERE runs.queue = queues.name AND runs.state = 'running' AND runs.holds_queue_slot)"
    )
    op.execute(
        "UPDATE tenants SET active = (SELECT COUNT(*) FROM runs"
        " WHERE runs.tenant = tenants.name AND runs.state = 'running' AND runs.holds_tenant_slot)"
    )


def downgrade() -> None:
    op.drop_column("runs", "holds_tenant_slot")
    op.drop_column("runs", "holds_queue_slot")
