"""schedules and their firings: runs started by cron or interval slots, each slot once

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WAITING = "NOT paused AND next_due IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("integration", sa.String(40)),
        sa.Column("cron", sa.String(200)),
        sa.Column("every_seconds", sa.Float()),
        sa.Column("phase_seconds", sa.Float(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("start_at", sa.Float()),
        sa.Column("end_at", sa.Float()),
        sa.Column("jitter_seconds", sa.Float(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("overlap", sa.String(16), nullable=False),
        sa.Column("catchup_seconds", sa.Float(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pause_note", sa.Text()),
        sa.Column("paused_by", sa.String(200)),
        sa.Column("paused_at", sa.Float()),
        sa.Column("next_slot", sa.Float()),
        sa.Column("next_due", sa.Float()),
        sa.Column("last_slot", sa.Float()),
        sa.Column("last_fired_at", sa.Float()),
        sa.Column("last_run_id", sa.String(40)),
        sa.Column("fired", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("missed", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(10), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name", name="schedules_name"),
    )
    # What the scheduler loop reads: the schedules due next.
    op.create_index(
        "schedules_due",
        "schedules",
        ["next_due"],
        sqlite_where=sa.text(_WAITING),
        postgresql_where=sa.text(_WAITING),
    )
    op.create_table(
        "schedule_firings",
        sa.Column("id", _ID, nullable=False),
        sa.Column("schedule_id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("slot", sa.Float()),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(12), nullable=False),
        sa.Column("run_id", sa.String(40)),
        sa.Column("detail", sa.Text()),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("schedule_firings_schedule", "schedule_firings", ["schedule_id", "id"])
    op.create_index("schedule_firings_at", "schedule_firings", ["at"])


def downgrade() -> None:
    op.drop_table("schedule_firings")
    op.drop_table("schedules")
