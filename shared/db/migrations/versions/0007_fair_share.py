"""runs: the ready set ordered by project within a priority, for the fair share between projects

The worker's start statement serves projects fairly within a priority: it asks whether another project
has a ready run at the same priority (two index probes, project ids below and above this run's), walks the
distinct projects with ready runs (one index descent each) and takes the oldest ready run of the chosen
project. All of that needs the ready set ordered ``(priority DESC, project_id, queued_at, id)``, which
replaces ``ix_runs_ready``'s ``(priority DESC, queued_at, id)``: still one partial index entered only when a
run becomes ready, so a run costs no more index writes than before. ``project_id COLLATE "C"``: the
statement compares project ids in that collation, which no other index of ``runs`` has, so its probes
use this index whatever the statistics say.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 12:55:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_runs_ready", table_name="runs")
    op.create_index(
        "ix_runs_ready", "runs", [sa.text("priority DESC"), sa.text('project_id COLLATE "C"'), "queued_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_ready", table_name="runs")
    op.create_index(
        "ix_runs_ready", "runs", [sa.text("priority DESC"), "queued_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
    )
