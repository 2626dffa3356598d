"""run_events: primary key (run_id, created_at, id), no foreign key to runs

Every run writes five events (created, started, attempt started/finished, ended), each a heap row, a
primary-key entry on ``id``, an entry in ``ix_run_events_run_created`` and a foreign-key check that
locks the run row. Events are only ever read by run, in (created_at, id) order, so that index becomes
the primary key (``id`` stays unique by construction: uuid7) and the separate one goes. Events are only
written next to their run by Sluice's own statements, and runs are only deleted with their job, which
deletes their events explicitly (``shared.jobs.lifecycle.delete_job``); the foreign key only cost a check per
event. Measured on the drain benchmark: ~10 % less PostgreSQL CPU per run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 02:05:00
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

def upgrade() -> None:
    op.drop_constraint("run_events_run_id_fkey", "run_events", type_="foreignkey")
    op.drop_index("ix_run_events_run_created", table_name="run_events")
    op.drop_constraint("run_events_pkey", "run_events", type_="primary")
    op.create_primary_key("run_events_pkey", "run_events", ["run_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_constraint("run_events_pkey", "run_events", type_="primary")
    op.create_primary_key("run_events_pkey", "run_events", ["id"])
    op.create_index("ix_run_events_run_created", "run_events", ["run_id", "created_at", "id"])
    op.create_foreign_key("run_events_run_id_fkey", "run_events", "runs", ["run_id"], ["id"], ondelete="CASCADE")
