"""licenses: accounts read from each integration, their activity, verdicts and findings

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_DUE = "due_at IS NOT NULL"
_OPEN = "closed_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "licenses",
        sa.Column("seq", _ID, nullable=False, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("integration_id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(500), nullable=False),
        # What the source says.
        sa.Column("email", sa.String(500)),
        sa.Column("display_name", sa.String(500)),
        sa.Column("role", sa.String(200)),
        sa.Column("tier", sa.String(200)),
        sa.Column("unit_cost", sa.Float()),
        sa.Column("currency", sa.String(3)),
        sa.Column("billing_period", sa.String(8), nullable=False),
        sa.Column("assigned_at", sa.Float()),
        sa.Column("renewal_at", sa.Float()),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("idp_status", sa.String(12)),
        sa.Column("service_account", sa.Boolean(), nullable=False),
        sa.Column("app_last_active", sa.Float()),
        sa.Column("idp_last_active", sa.Float()),
        # Active days of the last 180 (hex bits; bit i is `activity_day - i`).
        sa.Column("activity", sa.String(64), nullable=False),
        sa.Column("activity_day", sa.Integer()),
        sa.Column("first_seen_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.Column("sync_id", sa.String(80), nullable=False),
        sa.Column("removed_at", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
        # The verdict of the last pass.
        sa.Column("verdict", sa.String(20)),
        sa.Column("action", sa.String(10)),
        sa.Column("confidence", sa.String(8)),
        sa.Column("reason_code", sa.String(40)),
        sa.Column("reason", sa.Text()),
        sa.Column("monthly_savings", sa.Float()),
        sa.Column("savings_currency", sa.String(3)),
        sa.Column("realizable_at", sa.Float()),
        sa.Column("episode_start", sa.Float()),
        sa.Column("checked_at", sa.Float()),
        # When the pass must look at it again: now after a change, else when its verdict could
        # change with no new data; NULL: only a change can.
        sa.Column("due_at", sa.Float()),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id", name="licenses_id"),
        # Integration first: baselines and staleness read all of an integration's licenses.
        sa.UniqueConstraint("integration_id", "tenant", "user_id", name="licenses_account"),
    )
    op.create_index(
        "licenses_due",
        "licenses",
        ["due_at"],
        sqlite_where=sa.text(_DUE),
        postgresql_where=sa.text(_DUE),
    )
    op.create_index("licenses_tenant_verdict", "licenses", ["tenant", "verdict", "seq"])
    op.create_table(
        "license_sources",
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("integration_id", sa.String(40), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        # The first sync: accounts it listed are no new hires.
        sa.Column("first_synced_at", sa.Float(), nullable=False),
        sa.Column("synced_at", sa.Float(), nullable=False),
        sa.Column("complete_at", sa.Float()),
        sa.Column("stale_since", sa.Float()),
        sa.PrimaryKeyConstraint("integration_id", "source"),
    )
    op.create_table(
        "license_baselines",
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("integration_id", sa.String(40), nullable=False),
        sa.Column("threshold_days", sa.Integer(), nullable=False),
        sa.Column("baseline_days", sa.Float()),
        sa.Column("active_users", sa.Integer(), nullable=False),
        sa.Column("fallback", sa.Boolean(), nullable=False),
        # The cheapest paid tier per currency: what a downgrade moves to.
        sa.Column("tiers", sa.Text(), nullable=False),
        sa.Column("computed_at", sa.Float(), nullable=False),
        sa.Column("licenses", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("integration_id"),
    )
    op.create_table(
        "license_policies",
        sa.Column("tenant", sa.String(200), nullable=False),
        # '' for the tenant's default.
        sa.Column("integration_id", sa.String(40), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "integration_id"),
    )
    op.create_table(
        "license_findings",
        sa.Column("seq", _ID, nullable=False, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("integration_id", sa.String(40), nullable=False),
        sa.Column("license_id", sa.String(40), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("confidence", sa.String(8), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("episode_start", sa.Float(), nullable=False),
        sa.Column("until", sa.Float()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("monthly_savings", sa.Float()),
        sa.Column("currency", sa.String(3)),
        sa.Column("realizable_at", sa.Float()),
        sa.Column("action_run_id", sa.String(40)),
        sa.Column("note", sa.Text()),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("closed_at", sa.Float()),
        sa.Column("outcome", sa.String(12)),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id", name="license_findings_id"),
        # A license's episode is found once: the key of its event.
        sa.UniqueConstraint(
            "license_id", "verdict", "episode_start", name="license_findings_episode"
        ),
    )
    op.create_index(
        "license_findings_open",
        "license_findings",
        ["license_id"],
        unique=True,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )
    op.create_index("license_findings_tenant", "license_findings", ["tenant", "state", "seq"])
    op.create_table(
        "license_seats",
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("integration_id", sa.String(40), nullable=False),
        sa.Column("tier", sa.String(200), nullable=False),
        sa.Column("purchased", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        # The unassigned count last told (seats.unassigned is sent when it grows).
        sa.Column("told_unassigned", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("integration_id", "tier"),
    )
    op.create_table(
        "license_digests",
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "day"),
    )


def downgrade() -> None:
    op.drop_table("license_digests")
    op.drop_table("license_seats")
    op.drop_table("license_findings")
    op.drop_table("license_policies")
    op.drop_table("license_baselines")
    op.drop_table("license_sources")
    op.drop_table("licenses")
