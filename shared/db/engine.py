"""Database engine and sessions. Built from Settings by the process entry point, never at import time."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(database_url: str, *, pool_size: int = 10, single_use: bool = False,
                pre_ping: bool = True) -> Engine:
    """An engine for PostgreSQL (production) or SQLite (the embedded default).

    ``single_use`` keeps no pooled connections (migrations, CLI commands). ``pre_ping=False`` saves a round
    trip per checkout on hot paths that survive a failed statement anyway (the worker).
    """
    extra: dict[str, object] = {"poolclass": sa.pool.NullPool} if single_use else {}
    if database_url.startswith("sqlite"):
        engine = sa.create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 30}, **extra
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own BEGIN handling breaks SAVEPOINT and locking; issue BEGIN IMMEDIATE ourselves so
        # concurrent writers queue on the database lock instead of failing on upgrade.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    if single_use:
        return sa.create_engine(database_url, **extra)
    return sa.create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        json_deserializer=loads_json,
    )


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


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_conn.isolation_level = None  # autocommit at the driver; the "begin" hook opens transactions
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
