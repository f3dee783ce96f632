"""runs_error_group on (error_group, tenant): an error group's runs are counted per tenant (a
fingerprint is the same in every tenant that meets the same error), and the errors pages count
fifty groups at once

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_WHERE = sa.text("error_group IS NOT NULL")


def upgrade() -> None:
    op.drop_index("runs_error_group", "runs")
    op.create_index(
        "runs_error_group",
        "runs",
        ["error_group", "tenant"],
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("runs_error_group", "runs")
    op.create_index(
        "runs_error_group", "runs", ["error_group"], sqlite_where=_WHERE, postgresql_where=_WHERE
    )
