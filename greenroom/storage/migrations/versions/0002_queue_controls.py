"""queue controls: queues, tenants, pauses, rate limits, audit log, error groups, lineage

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ALTERs: SQLite's batch mode would rebuild the table and lose its partial indexes.
    op.add_column(
        "runs",
        sa.Column("pause_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("runs", sa.Column("retry_of", sa.String(40)))
    op.add_column("runs", sa.Column("error_group", sa.String(32)))
    op.add_column("runs", sa.Column("lease_seconds", sa.Float()))
    op.drop_index("runs_ready_free", "runs")
    op.drop_index("runs_ready_session", "runs")
    op.create_index("runs_retry_of", "runs", ["retry_of"])
    op.create_index("runs_error_group", "runs", ["error_group"])
    op.create_index("runs_finished", "runs", ["finished_at"])
    free = sa.text("state = 'queued' AND session_key IS NULL")
    ready = sa.text("state = 'queued'")
    op.create_index(
        "runs_ready_free",
        "runs",
        ["tenant", "queue", sa.text("priority DESC"), "seq"],
        sqlite_where=free,
        postgresql_where=free,
    )
    op.create_index(
        "runs_ready_session",
        "runs",
        ["tenant", "session_key", sa.text("priority DESC"), "seq"],
        sqlite_where=ready,
        postgresql_where=ready,
    )

    # Lanes are now per tenant and session key; they are derived data, so rebuild them.
    op.drop_table("lanes")
    op.create_table(
        "lanes",
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("session_key", sa.String(500), nullable=False),
        sa.Column("active", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_active", sa.Integer(), server_default="1", nullable=False),
        sa.Column("head_seq", sa.BigInteger()),
        sa.Column("head_priority", sa.Integer()),
        sa.Column("head_queue", sa.String(200)),
        sa.PrimaryKeyConstraint("tenant", "session_key"),
    )
    lane_ready = sa.text("head_seq IS NOT NULL AND active < max_active")
    op.create_index(
        "lanes_ready",
        "lanes",
        ["tenant", "head_queue", sa.text("head_priority DESC"), "head_seq"],
        sqlite_where=lane_ready,
        postgresql_where=lane_ready,
    )
    op.execute(
        "INSERT INTO lanes (tenant, session_key, active, max_active)"
        " SELECT tenant, session_key, SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 1"
        " FROM runs WHERE session_key IS NOT NULL AND state IN ('queued', 'running')"
        " GROUP BY tenant, session_key"
    )
    op.execute(
        "UPDATE lanes SET (head_seq, head_priority, head_queue) = (SELECT r.seq, r.priority,"
        " r.queue FROM runs r WHERE r.tenant = lanes.tenant AND r.session_key = lanes.session_key"
        " AND r.state = 'queued' ORDER BY r.priority DESC, r.seq LIMIT 1)"
    )

    op.create_table(
        "queues",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("concurrency", sa.Integer()),
        sa.Column("rate_limit", sa.Integer()),
        sa.Column("rate_period", sa.Float()),
        sa.Column("max_attempts", sa.Integer()),
        sa.Column("retry_initial_delay", sa.Float()),
        sa.Column("retry_backoff", sa.Float()),
        sa.Column("retry_max_delay", sa.Float()),
        sa.Column("lease_seconds", sa.Float()),
        sa.Column("heartbeat_seconds", sa.Float()),
        sa.Column("max_stalls", sa.Integer()),
        sa.Column("active", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(
        "INSERT INTO queues (name, active, created_at, updated_at)"
        " SELECT queue, 0, MIN(created_at), MIN(created_at) FROM runs GROUP BY queue"
    )
    op.create_table(
        "queue_starts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("queue_starts_window", "queue_starts", ["queue", "at"])
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("weight", sa.Float(), server_default="1", nullable=False),
        sa.Column("concurrency", sa.Integer()),
        sa.Column("active", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ready", sa.Integer(), server_default="0", nullable=False),
        sa.Column("pass", sa.Float(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    has_ready = sa.text("ready > 0")
    op.create_index(
        "tenants_ready", "tenants", ["pass"], sqlite_where=has_ready, postgresql_where=has_ready
    )
    op.execute(
        "INSERT INTO tenants (name, weight, active, ready, pass, created_at)"
        " SELECT tenant, 1, 0, SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0,"
        " MIN(created_at) FROM runs GROUP BY tenant"
    )
    op.create_table(
        "pauses",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("value", sa.String(500), nullable=False),
        sa.Column("drain", sa.Boolean(), nullable=False),
        sa.Column("paused_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("pauses_target", "pauses", ["tenant", "scope", "label", "value"], unique=True)
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("tenant", sa.String(200)),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("audit_log_tenant", "audit_log", ["tenant", "id"])
    op.create_table(
        "error_groups",
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("step", sa.String(200)),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("error_class", sa.String(16), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("last_run_id", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "fingerprint"),
    )


def downgrade() -> None:
    for table in ("error_groups", "audit_log", "pauses", "tenants", "queue_starts", "queues"):
        op.drop_table(table)
    op.drop_table("lanes")
    op.create_table(
        "lanes",
        sa.Column("session_key", sa.String(500), nullable=False),
        sa.Column("active", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_active", sa.Integer(), server_default="1", nullable=False),
        sa.Column("head_seq", sa.BigInteger()),
        sa.Column("head_priority", sa.Integer()),
        sa.Column("head_queue", sa.String(200)),
        sa.PrimaryKeyConstraint("session_key"),
    )
    lane_ready = sa.text("head_seq IS NOT NULL AND active < max_active")
    op.create_index(
        "lanes_ready",
        "lanes",
        ["head_queue", sa.text("head_priority DESC"), "head_seq"],
        sqlite_where=lane_ready,
        postgresql_where=lane_ready,
    )
    op.drop_index("runs_ready_free", "runs")
    op.drop_index("runs_ready_session", "runs")
    for index in ("runs_retry_of", "runs_error_group", "runs_finished"):
        op.drop_index(index, "runs")
    for column in ("pause_requested", "retry_of", "error_group", "lease_seconds"):
        op.drop_column("runs", column)
    free = sa.text("state = 'queued' AND session_key IS NULL")
    ready = sa.text("state = 'queued'")
    op.create_index(
        "runs_ready_free",
        "runs",
        ["queue", sa.text("priority DESC"), "seq"],
        sqlite_where=free,
        postgresql_where=free,
    )
    op.create_index(
        "runs_ready_session",
        "runs",
        ["session_key", sa.text("priority DESC"), "seq"],
        sqlite_where=ready,
        postgresql_where=ready,
    )
