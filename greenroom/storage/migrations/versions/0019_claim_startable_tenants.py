"""the claim function looks only at tenants with a run it could start (sql/0019_claim.sql): more
than 64 tenants whose ready runs all waited on a full queue, a busy session or their own limit
filled its scan and hid every other tenant's runs (bench/README.md, finding 36)

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_SQL = Path(__file__).parent.parent / "sql"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql((_SQL / "0019_claim.sql").read_text())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        first = (_SQL / "0006_claim.sql").read_text()
        function = first[first.index("CREATE FUNCTION greenroom_claim(") :]
        op.get_bind().exec_driver_sql(
            function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        )
