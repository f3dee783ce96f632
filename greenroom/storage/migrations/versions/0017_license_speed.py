"""license speed: schedules_integration on integration (the license pass and its upkeep read the
sync interval of the integrations at hand, which scanned every schedule), and on PostgreSQL the
activity functions of sql/0017_activity.sql (a save merges a page in one statement)

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_WHERE = sa.text("integration IS NOT NULL")
_SQL = Path(__file__).parent.parent / "sql" / "0017_activity.sql"
_FUNCTIONS = ("bits", "hex", "mark", "last", "swap")


def upgrade() -> None:
    op.create_index(
        "schedules_integration",
        "schedules",
        ["integration"],
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql(_SQL.read_text())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in _FUNCTIONS:
            op.execute(f"DROP FUNCTION greenroom_activity_{name}")
    op.drop_index("schedules_integration", "schedules")
