"""a failed or cancelled run that was retried records the newest run of its chain of retries
(superseded_by): it cannot be retried again by accident, and lists and counts leave it out

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("superseded_by", sa.String(40), nullable=True))
    # Each retried run points at the newest run of its chain of retries.
    op.execute(
        "WITH RECURSIVE chain(origin, id, seq) AS ("
        " SELECT retry_of, id, seq FROM runs WHERE retry_of IS NOT NULL"
        " UNION ALL SELECT chain.origin, r.id, r.seq FROM runs AS r"
        " JOIN chain ON r.retry_of = chain.id)"
        " UPDATE runs SET superseded_by = (SELECT chain.id FROM chain"
        " WHERE chain.origin = runs.id ORDER BY chain.seq DESC LIMIT 1)"
        " WHERE id IN (SELECT origin FROM chain)"
    )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("superseded_by")
