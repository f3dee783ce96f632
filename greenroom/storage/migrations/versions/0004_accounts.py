"""accounts: API keys, integrations with sealed credentials, request hashes for idempotency,
session logins

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("request_hash", sa.String(64)))
    op.add_column("tenants", sa.Column("registered_at", sa.Float()))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(200)),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("rate_limit", sa.Integer()),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float()),
        sa.Column("revoked_at", sa.Float()),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "integrations",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("connector", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("credentials", sa.Text(), nullable=False),
        sa.Column("credentials_updated_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("integrations_name", "integrations", ["tenant", "name"], unique=True)
    op.create_index("runs_tenant", "runs", ["tenant", "seq"])
    op.create_table(
        "session_logins",
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("session_key", sa.String(500), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("lease_token", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "session_key"),
    )


def downgrade() -> None:
    op.drop_table("session_logins")
    op.drop_index("runs_tenant", "runs")
    op.drop_index("integrations_name", "integrations")
    op.drop_table("integrations")
    op.drop_index("api_keys_tenant", "api_keys")
    op.drop_table("api_keys")
    op.drop_column("tenants", "registered_at")
    op.drop_column("runs", "request_hash")
