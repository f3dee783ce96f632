"""subscriptions, deliveries and their attempts: the events' way out to webhooks, Slack, e-mail

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ENDED = "state IN ('delivered', 'failed')"


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("types", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("key_id", sa.String(40)),
        sa.Column("secret", sa.Text()),
        sa.Column("previous_key_id", sa.String(40)),
        sa.Column("previous_secret", sa.Text()),
        sa.Column("previous_until", sa.Float()),
        sa.Column("digest_minutes", sa.Integer()),
        sa.Column("max_in_flight", sa.Integer(), nullable=False),
        sa.Column("rate_per_second", sa.Float()),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("tokens_at", sa.Float(), nullable=False),
        sa.Column("failing_since", sa.Float()),
        sa.Column("last_success_at", sa.Float()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("subscriptions_tenant", "subscriptions", ["tenant", "enabled"])
    op.create_table(
        "deliveries",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("leased_by", sa.String(200)),
        sa.Column("lease_expires_at", sa.Float()),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float()),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subscription_id", "event_id", name="deliveries_once"),
    )
    # Pruning reads the ended deliveries only.
    op.create_index(
        "deliveries_ended",
        "deliveries",
        ["updated_at"],
        sqlite_where=sa.text(_ENDED),
        postgresql_where=sa.text(_ENDED),
    )
    op.create_index("deliveries_tenant", "deliveries", ["tenant", "state", "id"])
    op.create_index("deliveries_event", "deliveries", ["event_id"])
    # A subscription's due deliveries: what claims probe and take.
    op.create_index(
        "deliveries_subscription", "deliveries", ["subscription_id", "state", "next_attempt_at"]
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("status", sa.Integer()),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("delivery_attempts_delivery", "delivery_attempts", ["delivery_id", "id"])
    op.create_index("delivery_attempts_at", "delivery_attempts", ["at"])
    # Where fan-out is in the events: one row, locked by the worker fanning out.
    op.create_table(
        "delivery_cursor",
        sa.Column("name", sa.String(20), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # Start after the events already written: subscriptions made from now on receive new ones.
    op.execute(
        "INSERT INTO delivery_cursor (name, txid, event_id) SELECT 'events',"
        " COALESCE(MAX(txid), 0), COALESCE(MAX(id), 0) FROM events"
    )


def downgrade() -> None:
    op.drop_table("delivery_cursor")
    op.drop_table("delivery_attempts")
    op.drop_table("deliveries")
    op.drop_table("subscriptions")
