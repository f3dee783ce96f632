"""reports: tenants' report subscriptions, each report made once per tenant, type and period,
and its files

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_subscriptions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("report_type", sa.String(16), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        # The schedule that fires its runs, and the event subscriptions of its channels.
        sa.Column("schedule_id", sa.String(36), nullable=False),
        sa.Column("subscription_ids", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("report_subscriptions_tenant", "report_subscriptions", ["tenant", "created_at"])
    op.create_table(
        "reports",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("report_type", sa.String(16), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("period_start", sa.Float(), nullable=False),
        sa.Column("period_end", sa.Float(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(40)),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        # How many report.ready events it has had: 1, and one more per audited resend.
        sa.Column("published", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "tenant", "report_type", "period", "period_start", name="reports_period"
        ),
    )
    op.create_index("reports_tenant", "reports", ["tenant", "period_start", "id"])
    op.create_table(
        "report_files",
        sa.Column("report_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        # utf-8: the body is the file (HTML, CSV); base64: a binary file (PDF), encoded.
        sa.Column("encoding", sa.String(8), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("report_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("report_files")
    op.drop_index("reports_tenant", "reports")
    op.drop_table("reports")
    op.drop_index("report_subscriptions_tenant", "report_subscriptions")
    op.drop_table("report_subscriptions")
