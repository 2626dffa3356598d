"""Alembic environment: the URL comes from the caller (``sluice db upgrade``), never from a file.

Every pod of a rollout may run ``sluice db upgrade`` at once (the Kubernetes manifests run it as each pod's
init container): the migration transaction first takes a PostgreSQL advisory lock, so one applies the
migrations and the others, once it commits, find the schema at head and do nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from shared.db.engine import make_engine
from shared.db.models import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK_KEY = "sluice:migrations"


def _migrate(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        # Held until the transaction ends; alembic reads the current revision only after it is granted.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                           {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set by the caller"
    engine = make_engine(url, single_use=True)
    with engine.connect() as conn:
        _migrate(conn)
    engine.dispose()


run_migrations_online()
