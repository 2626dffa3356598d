"""runs: the ready set by project within a priority, for the fair share between projects

The worker's start statement serves projects fairly within a priority: it asks whether another project
has a ready run at the same priority (two index probes, ``project_id`` below and above this run's) and
walks the distinct projects with ready runs (one index descent per project). Both need the ready set
ordered by ``(priority DESC, project_id, queued_at, id)``. Partial on ``status = 'queued'`` like
``ix_runs_ready``: a run enters it only when it becomes ready.

Revision ID: fair_share
Revises: 0003
Create Date: 2026-12-06 12:55:00
"""
import sqlalchemy as sa
from alembic import op

revision = 'fair_share'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_runs_ready_project", "runs", [sa.text("priority DESC"), "project_id", "queued_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_ready_project", table_name="runs")
