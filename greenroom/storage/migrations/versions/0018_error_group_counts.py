"""runs_error_group holds each run's state and superseded_by too: the errors pages count a
group's open and resolved failures from the index alone (at 1,000,000 runs a group's 2,500
failures were 2,500 table reads: the platform's errors page took 135/201 ms p50/p95)

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_WHERE = sa.text("error_group IS NOT NULL")


def upgrade() -> None:
    op.drop_index("runs_error_group", "runs")
    op.create_index(
        "runs_error_group",
        "runs",
        ["error_group", "tenant", "state", "superseded_by"],
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("runs_error_group", "runs")
    op.create_index(
        "runs_error_group",
        "runs",
        ["error_group", "tenant"],
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )
