"""Per-app services (built once by ``create_app``) and the per-request database session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    broker: Any  # a dramatiq broker: runs are enqueued by actor name through shared.messages


def services() -> Services:
    return current_app.extensions["sluice"]  # type: ignore[no-any-return]


def get_session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    session = g.get("db_session")
    if session is None:
        session = services().session_factory()
        g.db_session = session
    return session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()
