"""Per-app services (built once by ``create_app``) and the per-request database session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from flask import current_app, g, request
from sqlalchemy import event
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
    # GET requests only read (plus a throttled last_used_at write that may commit on its own): on
    # PostgreSQL they run in autocommit, which saves the BEGIN and ROLLBACK round trips per request.
    read_session_factory: sessionmaker[Session] | None = field(default=None)

    def __post_init__(self) -> None:
        # Tests pass one engine: reads switch its connections to autocommit per checkout. ``create_app``
        # passes a factory over a second engine whose connections are autocommit for good (no switching).
        if self.read_session_factory is None and self.engine.dialect.name == "postgresql":
            self.read_session_factory = sessionmaker(
                bind=self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False, autoflush=False)


def autocommit_read_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions over ``engine`` (a PostgreSQL engine of its own) whose connections are put in autocommit
    once, when they are opened: a GET then costs no BEGIN/ROLLBACK and no isolation switch per request."""
    event.listen(engine, "connect", _set_autocommit)
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


def _set_autocommit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.autocommit = True


def services() -> Services:
    return current_app.extensions["sluice"]  # type: ignore[no-any-return]


def get_session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    session = g.get("db_session")
    if session is None:
        svc = services()
        reading = request.method in ("GET", "HEAD") and svc.read_session_factory is not None
        session = (svc.read_session_factory if reading else svc.session_factory)()  # type: ignore[misc]
        g.db_session = session
    return session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()
