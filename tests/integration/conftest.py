"""Fixtures of the integration tests: the worker driven directly, and the API served over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis as redis_lib
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from shared.config import Settings
from tests.integration.runner_harness import Harness, make_harness


@pytest.fixture()
def harness(request: pytest.FixtureRequest, settings: Settings, session_factory: sessionmaker[Session],
            redis_client: redis_lib.Redis) -> Iterator[Harness]:
    h = make_harness(settings, session_factory, redis_client, variant=getattr(request, "param", "plain"))
    h.monitor.start()
    try:
        yield h
    finally:
        h.monitor.stop()
        h.runner.connection.close()  # the test thread's connection goes back now, not when the runner is collected


@pytest.fixture()
def api_url(app: Flask) -> Iterator[str]:
    """The test app served over real HTTP on a free port (for clients outside Flask's test client)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)
