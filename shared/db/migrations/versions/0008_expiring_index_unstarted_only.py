"""runs: the expiry index holds only runs that can still expire

``ix_runs_expiring`` held every never-started run with an ``expires_at``, whatever its status, so runs that
had expired (or were canceled before they started) stayed in it until retention deleted them, and every
expiry sweep and next-expiry lookup read them all again, more each day. It now holds only the ``delayed``
and ``queued`` ones, the runs that can still expire: a run leaves it as it starts or finishes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 19:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_runs_expiring", table_name="runs")
    op.create_index("ix_runs_expiring", "runs", ["expires_at"],
                    postgresql_where=sa.text("attempt = 0 AND expires_at IS NOT NULL "
                                             "AND status IN ('delayed', 'queued')"))


def downgrade() -> None:
    op.drop_index("ix_runs_expiring", table_name="runs")
    op.create_index("ix_runs_expiring", "runs", ["expires_at"],
                    postgresql_where=sa.text("attempt = 0 AND expires_at IS NOT NULL"))
