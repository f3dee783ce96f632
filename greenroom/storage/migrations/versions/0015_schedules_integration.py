"""schedules_integration on integration: the license pass and its upkeep read the sync interval
of the integrations at hand, which scanned every schedule

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

_WHERE = sa.text("integration IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "schedules_integration",
        "schedules",
        ["integration"],
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("schedules_integration", "schedules")
