"""runs.traceparent: the W3C trace context each run was created with

Runs created before have none (NULL); each of their attempts then calls the endpoint in a new trace.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "traceparent")
