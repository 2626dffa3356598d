"""Test fixtures: real PostgreSQL and real Redis, with strict hygiene.

- PostgreSQL: a dedicated database (``SLUICE_TEST_DB_NAME``, default ``sluice_test``) is dropped,
  recreated and migrated once per session; every table is truncated after each test that used it.
- Redis: a dedicated DB index (``SLUICE_TEST_REDIS_DB``, default 15), flushed before and after each test.
- Locally a missing service skips the tests that need it; in CI (``CI`` set) it fails them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis as redis_lib
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.db.migrate import upgrade

PG_ADMIN_URL = os.environ.get("SLUICE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DB_NAME = os.environ.get("SLUICE_TEST_DB_NAME", "sluice_test")
REDIS_BASE_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("SLUICE_TEST_REDIS_DB", "15"))
IN_CI = bool(os.environ.get("CI"))
# The key webhook secrets are sealed with in tests (``Settings.secret_keys``); 32 bytes, URL-safe base64.
TEST_SECRET_KEY = "c2x1aWNlLXRlc3Qtc2VjcmV0LWtleS0zMi1ieXRlcyE="


def pytest_configure(config: pytest.Config) -> None:
    """The processes tests start (``sluice api``, ``sluice worker``, honcho) inherit this environment and,
    like production, refuse to run without a secret key; ``sluice dev`` tests remove it (dev needs none)."""
    os.environ.setdefault("SLUICE_SECRET_KEY", TEST_SECRET_KEY)

TABLES = ["webhook_deliveries", "run_events", "runs", "batches", "job_dependencies", "job_versions", "jobs",
          "api_keys"]


def _unavailable(what: str, exc: Exception) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI but unavailable: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


def pg_url() -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_DB_NAME


def redis_url() -> str:
    return f"{REDIS_BASE_URL}/{REDIS_DB}"


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    try:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
            ), {"d": PG_DB_NAME})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{PG_DB_NAME}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{PG_DB_NAME}"'))
        admin.dispose()
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    upgrade(pg_url())
    engine = make_engine(pg_url(), pool_size=20)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    try:
        _truncate_once(engine)
    except sa.exc.DBAPIError as exc:
        # A test that terminated the backends (a PostgreSQL restart) leaves pooled connections that were used
        # too recently to be pinged: the first one used is found dead, and the pool replaces them all.
        if not exc.connection_invalidated:
            raise
        _truncate_once(engine)


def _truncate_once(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(TABLES) + " CASCADE"))


@pytest.fixture()
def db_engine(pg_engine: Engine) -> Iterator[Engine]:
    """The migrated test database, emptied after the test."""
    yield pg_engine
    _truncate(pg_engine)


@pytest.fixture()
def session_factory(db_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(db_engine)


@pytest.fixture()
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    s = session_factory()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


@pytest.fixture()
def redis_client() -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url())
    try:
        client.flushdb()
    except Exception as exc:
        _unavailable("Redis", exc)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture()
def settings(db_engine: Engine, redis_client: redis_lib.Redis) -> Settings:
    """Settings pointing at the test PostgreSQL database and Redis DB; private endpoints allowed."""
    return Settings.from_env({"DATABASE_URL": pg_url()}).with_overrides(
        redis_url=redis_url(),
        allow_private_endpoints=True,
        log_json=False,
        secret_keys=(TEST_SECRET_KEY,),
    )


@pytest.fixture()
def app(settings: Settings) -> Iterator[Flask]:
    """The API over the test database and Redis DB (private endpoints allowed), built as ``sluice api``
    builds it: ``create_app(settings)``, its own pools preparing their statements, the front layer on."""
    from api.app import create_app

    application = create_app(settings)
    application.testing = True
    yield application
    application.extensions["sluice"].close()


@pytest.fixture()
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def make_key(session_factory: sessionmaker[Session], project_id: str = "proj-a", scopes: str = "*") -> str:
    from shared.apikeys import create_key, parse_scopes
    from shared.clock import utcnow
    from shared.db.engine import transaction

    with transaction(session_factory) as s:
        _, plaintext = create_key(s, project_id=project_id, scopes=parse_scopes(scopes), name="test", now=utcnow())
    return plaintext


@pytest.fixture()
def auth(session_factory: sessionmaker[Session]) -> dict[str, str]:
    """Headers with an all-scopes key of project ``proj-a``."""
    return {"Authorization": f"Bearer {make_key(session_factory)}"}


@pytest.fixture()
def other_auth(session_factory: sessionmaker[Session]) -> dict[str, str]:
    """Headers with an all-scopes key of another project, ``proj-b`` (tenant isolation tests)."""
    return {"Authorization": f"Bearer {make_key(session_factory, 'proj-b')}"}
