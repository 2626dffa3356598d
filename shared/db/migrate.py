"""Schema migrations: the only way the schema is created or changed (``sluice db upgrade``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError

from shared.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head", *, secret_keys: Sequence[str] = ()) -> None:
    """Migrate up to ``revision``; with ``secret_keys``, data migrations seal plain webhook secrets. A database
    at a revision this release does not know (migrated by a newer release) is refused with ``ConfigError``."""
    config = alembic_config(database_url)
    config.attributes["secret_keys"] = tuple(secret_keys)
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        raise ConfigError(f"cannot migrate the database (DATABASE_URL): {exc}; a newer Sluice release may have "
                          "migrated it: run that release's `sluice db upgrade`") from None
