"""Settings from the environment: PostgreSQL is the only database, and a wrong URL says what to set."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.db.engine import make_engine
from shared.errors import ConfigError

URL = "postgresql://db/sluice"


@pytest.mark.parametrize("env", [{}, {"DATABASE_URL": ""}, {"DATABASE_URL": "  "}])
def test_database_url_is_required_and_the_message_names_the_fix(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.message.startswith("DATABASE_URL is not set: point it at PostgreSQL")
    assert "sluice dev" in caught.value.message


@pytest.mark.parametrize(("name", "raw", "expected"), [
    ("SLUICE_STALE_AFTER_SECS", "abc", "SLUICE_STALE_AFTER_SECS must be a whole number of seconds, got 'abc'"),
    ("SLUICE_HEARTBEAT_INTERVAL_SECS", "1.5", "SLUICE_HEARTBEAT_INTERVAL_SECS must be a whole number of seconds"),
    ("SLUICE_HEARTBEAT_INTERVAL_SECS", "0", "SLUICE_HEARTBEAT_INTERVAL_SECS must be a whole number of seconds of "
                                            "at least 1, got '0'"),
    ("SLUICE_WORKER_THREADS", "many", "SLUICE_WORKER_THREADS must be a whole number, got 'many'"),
])
def test_a_malformed_number_says_what_is_expected(name: str, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DATABASE_URL": URL, name: raw})
    assert caught.value.message.startswith(expected)


def test_stale_after_must_leave_room_for_two_missed_heartbeats() -> None:
    env = {"DATABASE_URL": URL, "SLUICE_HEARTBEAT_INTERVAL_SECS": "10"}
    assert Settings.from_env({**env, "SLUICE_STALE_AFTER_SECS": "20"}).stale_after_secs == 20
    for stale in ("19", "5"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**env, "SLUICE_STALE_AFTER_SECS": stale})
        assert caught.value.message.startswith(f"SLUICE_STALE_AFTER_SECS ({stale}) must be at least 2 x "
                                               "SLUICE_HEARTBEAT_INTERVAL_SECS (10), i.e. >= 20")


def test_cron_changes_are_picked_up_within_thirty_seconds() -> None:
    assert Settings.from_env({"DATABASE_URL": URL, "SLUICE_SCHEDULER_SYNC_SECS": "30"}).scheduler_sync_secs == 30
    with pytest.raises(ConfigError, match=r"SLUICE_SCHEDULER_SYNC_SECS \(31\) must be at most 30"):
        Settings.from_env({"DATABASE_URL": URL, "SLUICE_SCHEDULER_SYNC_SECS": "31"})


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


@pytest.mark.parametrize("url", ["postgresql://u:secret@[::1/app", "postgresql://u:secret@db:port/app",
                                 "postgresql://u:secret@db:99999/app"])
def test_a_postgresql_url_that_does_not_parse_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DATABASE_URL": url})
    assert caught.value.message == ("DATABASE_URL: not a URL PostgreSQL can be reached at "
                                    "(postgresql://user:password@host:5432/dbname)")


def test_make_engine_refuses_what_settings_refuse() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL: PostgreSQL is required"):
        make_engine("sqlite:///x.db")


def test_private_endpoint_allowlist_is_parsed_once_and_checked() -> None:
    settings = Settings.from_env({"DATABASE_URL": URL,
                                  "SLUICE_ALLOWED_PRIVATE_ENDPOINTS": "10.0.0.0/8, db.corp *.svc.cluster.local"})
    assert settings.allowed_private_endpoints == ("10.0.0.0/8", "db.corp", "*.svc.cluster.local")
    policy = settings.address_policy
    assert policy is settings.address_policy and not policy.allow_private
    assert policy.names_host("db.corp") and policy.names_host("api.svc.cluster.local")
    with pytest.raises(ConfigError, match=r"^SLUICE_ALLOWED_PRIVATE_ENDPOINTS: .* is not a network"):
        Settings.from_env({"DATABASE_URL": URL, "SLUICE_ALLOWED_PRIVATE_ENDPOINTS": "10.0.0.1/8"})


def test_the_sweep_interval_is_the_schedulers_safety_net_and_read_from_the_environment() -> None:
    assert Settings.from_env({"DATABASE_URL": URL}).sweep_interval_secs == 5.0
    assert Settings.from_env({"DATABASE_URL": URL, "SLUICE_SWEEP_INTERVAL_SECS": "30"}).sweep_interval_secs == 30.0
    with pytest.raises(ConfigError, match="SLUICE_SWEEP_INTERVAL_SECS must be a whole number of seconds of at least 1"):
        Settings.from_env({"DATABASE_URL": URL, "SLUICE_SWEEP_INTERVAL_SECS": "0"})
