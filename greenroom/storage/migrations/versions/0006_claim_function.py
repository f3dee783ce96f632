"""the claim as one function on PostgreSQL (sql/0006_claim.sql): a claim is one statement

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SQL = Path(__file__).parent.parent / "sql" / "0006_claim.sql"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql(_SQL.read_text())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION greenroom_claim")
        op.execute("DROP TYPE greenroom_candidate")
