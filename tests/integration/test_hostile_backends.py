"""Backends that stop answering never hold a thread for ever: every PostgreSQL connection has a connect
timeout (and the API's a statement timeout), every Redis client socket timeouts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis as redis_lib
import sqlalchemy as sa

from shared.db.engine import make_engine
from shared.redis_client import TIMED_CLASSES, make_redis


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port whose kernel completes TCP handshakes (listen backlog) but where nothing ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_a_postgresql_server_that_never_answers_fails_the_connect_in_seconds(silent_port):
    engine = make_engine(f"postgresql://u@127.0.0.1:{silent_port}/db", single_use=True)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="timeout"):
        engine.connect()
    assert time.monotonic() - started < 15


def test_a_redis_server_that_never_answers_fails_the_call_in_seconds(silent_port):
    client = make_redis(f"redis://127.0.0.1:{silent_port}/0")
    started = time.monotonic()
    with pytest.raises(redis_lib.exceptions.ConnectionError, match="Resource temporarily unavailable"):
        client.ping()  # the kernel's read timeout (shared.redis_client)
    assert time.monotonic() - started < 15
    client.close()


def test_api_statements_are_cancelled_after_the_statement_timeout(settings):
    from api.app import create_app

    app = create_app(settings.with_overrides(api_statement_timeout_secs=1))
    try:
        services = app.extensions["sluice"]
        for engine in (services.engine, services.read_engine):
            with engine.connect() as connection:
                assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == "1s"
                started = time.monotonic()
                with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                    connection.execute(sa.text("SELECT pg_sleep(5)"))
                assert time.monotonic() - started < 4
        with services.engine.connect() as connection:
            assert "connect_timeout=" in connection.connection.dbapi_connection.dsn  # type: ignore[union-attr]
    finally:
        app.extensions["sluice"].close()


def test_every_process_builds_its_redis_clients_with_timeouts(settings):
    from api.app import create_app
    from shared.messages.broker import make_broker

    app = create_app(settings)
    try:
        clients = [app.extensions["sluice"].redis, app.extensions["sluice"].broker.client,
                   make_broker(settings).client]
        for client in clients:
            kwargs = client.connection_pool.connection_kwargs
            assert kwargs["io_timeout_secs"] and kwargs["socket_connect_timeout"], kwargs
            assert client.connection_pool.connection_class in TIMED_CLASSES.values()
    finally:
        app.extensions["sluice"].close()
