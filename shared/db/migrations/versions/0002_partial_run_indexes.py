"""runs: partial indexes for columns most runs leave NULL

Every INSERT into ``runs`` (the trigger hot path) writes one entry per index. Three indexes only ever
serve lookups of a non-NULL value — idempotency keys (§4.3), batch ids and finished runs (the health
window, §8) — yet indexed every run. As partial indexes (``… IS NOT NULL``) a plain run skips them;
every query that uses them compares the column with a value, which PostgreSQL accepts
as proof of the predicate.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_PARTIAL = (
    ("ix_runs_job_finished", ["job_id", "finished_at"], "finished_at IS NOT NULL"),
    ("ix_runs_job_idempotency", ["job_id", "idempotency_key"], "idempotency_key IS NOT NULL"),
    ("ix_runs_batch", ["batch_id"], "batch_id IS NOT NULL"),
)


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        for name, columns, predicate in _PARTIAL:
            batch_op.drop_index(name)
            batch_op.create_index(name, columns, unique=False, postgresql_where=sa.text(predicate))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        for name, columns, _predicate in _PARTIAL:
            batch_op.drop_index(name)
            batch_op.create_index(name, columns, unique=False)
