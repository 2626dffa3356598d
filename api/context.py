"""Per-app services (built once by ``create_app``) and the per-request database session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from flask import current_app, g, request
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.access import Access
from shared.config import Settings
from shared.db.schema_version import ShippedSchema


@dataclass
class Services:
    """What ``create_app`` builds once per process and every request uses."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    # GET requests only read (plus a throttled last_used_at write that commits on its own): they run on a
    # second engine whose connections stay in autocommit, which saves the BEGIN and ROLLBACK round trips.
    read_engine: Engine
    read_session_factory: sessionmaker[Session]
    redis: redis.Redis
    broker: Any  # a dramatiq broker: runs are enqueued by actor name through shared.messages
    access: Access
    shipped_schema: ShippedSchema  # /readyz refuses a database whose schema is older

    def close(self) -> None:
        """Close the pools (the process's end, or a test's)."""
        self.engine.dispose()
        self.read_engine.dispose()
        self.redis.close()


def autocommit_read_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions over ``engine`` (a PostgreSQL engine of its own) whose connections are put in autocommit
    once, when they are opened: a GET then costs no BEGIN/ROLLBACK and no isolation switch per request."""
    event.listen(engine, "connect", _set_autocommit)
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


def _set_autocommit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.autocommit = True


def services() -> Services:
    return current_app.extensions["sluice"]  # type: ignore[no-any-return]


def autocommit_first(view: Any) -> Any:
    """Mark a write view whose session starts in autocommit (like a GET's) because its common path is one
    atomic statement: no BEGIN/COMMIT round trips. Steps that need a transaction (advisory locks, several
    writes) call ``transactional_session()`` first. Put it under the route decorator."""
    view.autocommit_first = True
    return view


def _starts_in_autocommit() -> bool:
    if request.method in ("GET", "HEAD"):
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "autocommit_first", False))


def get_session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    session = g.get("db_session")
    if session is None:
        svc = services()
        autocommit = _starts_in_autocommit()
        session = (svc.read_session_factory if autocommit else svc.session_factory)()
        g.db_session = session
        g.db_session_autocommit = autocommit
    return session


def transactional_session() -> Session:
    """The request's session inside a transaction: ``get_session()`` unless that one is in autocommit, in
    which case a transactional session replaces it for the rest of the request (both close at teardown)."""
    session = get_session()
    if not g.get("db_session_autocommit"):
        return session
    g.db_session_idle = session  # whatever it wrote is already committed
    g.db_session = services().session_factory()
    g.db_session_autocommit = False
    return g.db_session  # type: ignore[no-any-return]


def close_session(_exc: BaseException | None = None) -> None:
    for name in ("db_session", "db_session_idle"):
        session = g.pop(name, None)
        if session is not None:
            session.rollback()
            session.close()
