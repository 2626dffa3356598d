"""runs: a partial index on continuation_of, for the console's dead-letter page

The dead-letter page shows, beside each failed run, the newest replay of it (the run whose
``continuation_of`` names it) so that a replay still running can be followed or canceled. Without an index
that lookup reads every run of the project; only replays hold the column, so the index is partial and a
plain run's INSERT skips it.

Revision ID: console_indexes
Revises: 0003
Create Date: 2026-12-06 13:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = 'console_indexes'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_continuation_of", "runs", ["continuation_of"], unique=False,
                    postgresql_where=sa.text("continuation_of IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_runs_continuation_of", table_name="runs")
