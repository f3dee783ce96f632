"""slots and partial indexes: a running run records whether it holds a slot of its queue's
and its tenant's concurrency limit, so its end gives back exactly what its claim took; indexes
on columns most runs leave empty become partial, so claims and ends do not maintain them

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

_PARTIAL = (
    ("runs_retry_of", "retry_of"),
    ("runs_error_group", "error_group"),
    ("runs_finished", "finished_at"),
)


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
    for name, column in _PARTIAL:
        op.drop_index(name, "runs")
        op.create_index(
            name,
            "runs",
            [column],
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )


def downgrade() -> None:
    for name, column in _PARTIAL:
        op.drop_index(name, "runs")
        op.create_index(name, "runs", [column])
    op.drop_column("runs", "holds_tenant_slot")
    op.drop_column("runs", "holds_queue_slot")
