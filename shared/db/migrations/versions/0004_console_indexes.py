"""runs and jobs: partial indexes for the console's dead-letter and fleet pages

The dead-letter page shows, beside each failed run, the newest replay of it (the run whose
``continuation_of`` names it) so that a replay still running can be followed or canceled. Without an index
that lookup reads every run of the project; only replays hold the column, so the index is partial and a
plain run's INSERT skips it. The fleet page lists the jobs that have a concurrency or rate limit: without
an index of those, it read every job of the project (13 ms for 10,000 jobs).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 13:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_continuation_of", "runs", ["continuation_of"], unique=False,
                    postgresql_where=sa.text("continuation_of IS NOT NULL"))
    op.create_index("ix_jobs_limited", "jobs", ["project_id", "created_at"], unique=False,
                    postgresql_where=sa.text("max_concurrency IS NOT NULL OR rate_limit_max IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_limited", table_name="jobs")
    op.drop_index("ix_runs_continuation_of", table_name="runs")
