"""Settings from the environment: PostgreSQL is the only database, and a wrong URL says what to set."""

from __future__ import annotations

import pytest

from shared.config import DEFAULT_DATABASE_URL, Settings
from shared.db.engine import make_engine
from shared.errors import ConfigError


def test_without_database_url_the_local_postgresql_is_the_default() -> None:
    assert Settings.from_env({}).database_url == DEFAULT_DATABASE_URL == "postgresql://127.0.0.1:5432/sluice"


@pytest.mark.parametrize("url", ["postgresql://u:p@db:5432/sluice", "postgresql+psycopg2://db/sluice"])
def test_postgresql_urls_are_taken_as_given(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_the_postgres_scheme_of_procfile_platforms_is_read_as_postgresql() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgres://u:p@db:5432/app"})
    assert settings.database_url == "postgresql://u:p@db:5432/app"


@pytest.mark.parametrize("url", ["sqlite:///sluice.db", "sqlite://", "mysql://u:secret@db/x", "db.example:5432"])
def test_any_other_database_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DATABASE_URL": url})
    message = caught.value.message
    assert message.startswith("DATABASE_URL: PostgreSQL is required") and "sluice dev" in message
    assert "secret" not in message and "\n" not in message


def test_make_engine_refuses_what_settings_refuse() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL: PostgreSQL is required"):
        make_engine("sqlite:///x.db")


def test_the_sweep_interval_is_the_schedulers_safety_net_and_read_from_the_environment() -> None:
    assert Settings.from_env({}).sweep_interval_secs == 5.0
    assert Settings.from_env({"SLUICE_SWEEP_INTERVAL_SECS": "30"}).sweep_interval_secs == 30.0
    with pytest.raises(ConfigError, match="SLUICE_SWEEP_INTERVAL_SECS: must be >= 1"):
        Settings.from_env({"SLUICE_SWEEP_INTERVAL_SECS": "0"})
