"""runs_live and a covering runs_finished: the overview and GET /v1/queues count runs not ended
yet through an index of them alone, and the last day's ends through the index on end time
(with each end's tenant, queue, state and retry), never the whole runs table

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_ENDED = sa.text("finished_at IS NOT NULL")
_LIVE = sa.text("state IN ('queued', 'delayed', 'running', 'paused')")


def upgrade() -> None:
    op.drop_index("runs_finished", "runs")
    op.create_index(
        "runs_finished",
        "runs",
        ["finished_at", "tenant", "queue", "state", "superseded_by"],
        sqlite_where=_ENDED,
        postgresql_where=_ENDED,
    )
    op.create_index(
        "runs_live",
        "runs",
        ["tenant", "queue", "state"],
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("runs_live", "runs")
    op.drop_index("runs_finished", "runs")
    op.create_index(
        "runs_finished", "runs", ["finished_at"], sqlite_where=_ENDED, postgresql_where=_ENDED
    )
