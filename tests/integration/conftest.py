"""Fixtures of the integration tests that drive the worker directly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_lib
from sqlalchemy.orm import Session, sessionmaker

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
