"""Database engine and sessions. Built from Settings by the process entry point, never at import time."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import postgres_url
from shared.errors import ConfigError

# Every connection gives up connecting after this long (a server that never answers must not hold a thread
# for the kernel's TCP timeout), and TCP keepalives find a peer that vanished mid-statement.
CONNECT_TIMEOUT_SECS = 5
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
# A pooled connection that has idled this long is pinged before it is used (HikariCP's alive-bypass window):
# one returned moments ago is alive in all but a rare race, and a ping at every checkout costs a round trip
# per request (a tenth of an API read's CPU).
PING_AFTER_IDLE_SECS = 0.5


def connect_args(statement_timeout_secs: int | None = None) -> dict[str, object]:
    """libpq connection parameters: the connect timeout, keepalives and, when given, a ``statement_timeout``
    for every statement of the connection's sessions. Parameters in ``DATABASE_URL``'s query win."""
    args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_SECS, **_KEEPALIVES}
    if statement_timeout_secs:
        args["options"] = f"-c statement_timeout={int(statement_timeout_secs * 1000)}"
    return args


def make_engine(database_url: str, *, pool_size: int = 10, single_use: bool = False,
                pre_ping: bool = True, statement_timeout_secs: int | None = None) -> Engine:
    """A PostgreSQL engine (any other URL is refused with the ``DATABASE_URL`` message).

    ``single_use`` keeps no pooled connections (migrations, CLI commands). A pooled connection that idled
    ``PING_AFTER_IDLE_SECS`` or more is pinged at checkout (``pre_ping``): one that died meanwhile
    (PostgreSQL restarted) is replaced instead of failing the request that took it.
    ``statement_timeout_secs``: PostgreSQL cancels any statement running longer (the API's engines).
    """
    url = sa.make_url(postgres_url(database_url))
    # Parameters given in the URL's query (e.g. ?connect_timeout=10) win over ours.
    args = {key: value for key, value in connect_args(statement_timeout_secs).items() if key not in url.query}
    # hide_parameters: bound values (payloads, webhook secrets) never appear in errors or logs.
    if single_use:
        return sa.create_engine(url, poolclass=sa.pool.NullPool, json_deserializer=loads_json, hide_parameters=True,
                                connect_args=args)
    engine = sa.create_engine(
        url,
        hide_parameters=True,
        connect_args=args,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        json_deserializer=loads_json,
    )
    if pre_ping:
        _ping_after_idling(engine)
    return engine


def _ping_after_idling(engine: Engine) -> None:
    """Ping a pooled connection at checkout when it idled ``PING_AFTER_IDLE_SECS`` or more; a dead one is
    replaced by a new connection (the pool retries the checkout on ``DisconnectionError``)."""
    dbapi_error = engine.dialect.loaded_dbapi.Error

    @sa.event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECS:
            return  # new, or returned moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except dbapi_error as exc:
            raise sa.exc.DisconnectionError(str(exc)) from exc


def check_database(database_url: str, timeout_secs: int = 5,
                   verify: Callable[[Connection], str | None] | None = None) -> None:
    """Connect once and return, or raise ``ConfigError`` with one line naming the server, the reason and the
    likely fix (a process that cannot reach its database says so at start instead of failing on first use).
    ``verify`` looks at the connected database and returns why it cannot serve and the fix (one clause, the
    end of the error), or ``None``."""
    url = sa.make_url(postgres_url(database_url))
    shown = url.render_as_string(hide_password=True)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": timeout_secs})
    try:
        with engine.connect() as connection:
            problem = verify(connection) if verify is not None else None
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise ConfigError(f"cannot connect to PostgreSQL at {shown} (DATABASE_URL): {reason}"
                          f"{connection_hint(reason, url)}") from None
    finally:
        engine.dispose()
    if problem is not None:
        raise ConfigError(f"PostgreSQL at {shown} (DATABASE_URL): {problem}")


def connection_hint(reason: str, url: sa.URL) -> str:
    """What to try after libpq's ``reason`` for not connecting to ``url``, as a clause to append."""
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    lowered = reason.lower()
    if ("password authentication failed" in lowered or "no password supplied" in lowered
            or ("role" in lowered and "does not exist" in lowered)):
        return "; check the user and password in DATABASE_URL (or PGUSER / PGPASSWORD)"
    if "database" in lowered and "does not exist" in lowered:
        return f"; create it (createdb -h {url.host or 'localhost'} {url.database}) or fix DATABASE_URL"
    if "could not translate host name" in lowered:
        return "; check the host name in DATABASE_URL"
    return f"; is PostgreSQL running at {where}?"


_EMPTY_JSON = {"{}": dict, "[]": list}


# orjson reads an integer beyond 64 bits as a float, losing digits: text with a run of 16+ digits (which
# every such integer has) goes to ``json``; everything else decodes identically and ~5× faster in orjson.
_LONG_DIGITS = re.compile(r"\d{16}")


def loads_json(text: str) -> object:
    """JSON column text → value (a page of 50 jobs decodes 250 values): a shortcut for the empty objects and
    arrays most JSONB columns hold, orjson for the rest unless it could lose digits; every call returns a
    fresh object."""
    empty = _EMPTY_JSON.get(text)
    if empty is not None:
        return empty()
    return json.loads(text) if _LONG_DIGITS.search(text) else orjson.loads(text)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

