"""Server-side prepared statements for the statements run on every request or attempt.

psycopg2 sends every statement as text, so PostgreSQL parses and plans it on every execution. For the
worker's per-attempt statements against ``runs`` (14 indexes, a join for the claim) planning costs more
server CPU than executing (measured: claim 0.13 ms planning vs 0.05 ms executing, warm). So each such
statement is ``PREPARE``d once per connection and then ``EXECUTE``d, on every engine: the API, the workers,
the scheduler, the CLI and the tests all run the same statements the same way.

A prepared statement lives in the database session: the names prepared on a connection are remembered in
the pool's per-connection ``info`` dict (``prepared_names``: the one registry, which the worker threads'
own connections share), which SQLAlchemy clears when a connection is replaced. ``PREPARE``
is not transactional, so a rolled-back transaction keeps it. Not for a transaction-pooling PgBouncer
(connections there are not sessions); point Sluice at PostgreSQL or a session-pooling bouncer.
"""

from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult

_INFO_KEY = "sluice_prepared"
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


@dataclass(frozen=True)
class PreparedStatement:
    """One statement written with ``:name`` parameters, runnable as text or as a prepared statement."""

    name: str  # unique per statement text: the prepared statement's name
    text: sa.TextClause
    positional_sql: str  # the same SQL with $1..$n
    order: tuple[str, ...]  # parameter names in $n order

    def execute_call(self, params: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The driver-level ``EXECUTE name(%s, …)`` of the prepared form and its values from ``params``."""
        placeholders = f"({', '.join(['%s'] * len(self.order))})" if self.order else ""
        return f"EXECUTE {self.name}{placeholders}", tuple(params[key] for key in self.order)

    @classmethod
    def build(cls, name: str, sql: str) -> PreparedStatement:
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in order:
                order.append(match.group(1))
            return f"${order.index(match.group(1)) + 1}"

        return cls(name, sa.text(sql), _PARAM.sub(number, sql), tuple(order))


def prepared_names(info: dict[str, Any]) -> set[str]:
    """The names prepared on the database session of the pooled connection whose ``info`` this is: the one
    registry of every path that prepares statements (the pool clears ``info`` when it replaces a connection,
    and with it the names, as the new database session has none)."""
    names: set[str] | None = info.get(_INFO_KEY)
    if names is None:
        names = info[_INFO_KEY] = set()
    return names


def prepare_sql(statement: PreparedStatement) -> str:
    return f"PREPARE {statement.name} AS {statement.positional_sql}"


def prepare_once(connection: Connection, statement: PreparedStatement) -> None:
    """Prepare ``statement`` on this connection unless it already is."""
    prepared = prepared_names(connection.info)
    if statement.name not in prepared:
        connection.exec_driver_sql(prepare_sql(statement))
        prepared.add(statement.name)


def execute_prepared(connection: Connection, statement: PreparedStatement, params: dict[str, Any]) -> CursorResult[Any]:
    """``EXECUTE`` ``statement``, preparing it on first use on this connection."""
    prepare_once(connection, statement)
    return connection.exec_driver_sql(*statement.execute_call(params))


# ------------------------------------------------------------------ the driver's cursor, for the API's hot path
# ``execute_prepared`` still goes through SQLAlchemy's statement execution (events, context, result metadata built
# from the cursor description on every call: ~45 µs for the 50-column key + job row). The API's hot
# statements (``run_prepared``, ``PreparedQuery``: the trigger's lookup and insert, key lookups, job pages) skip it:
# they run on the DBAPI cursor of the same pooled connection, inside the same transaction, and failures are
# wrapped and handled (disconnect → connection invalidated) as SQLAlchemy would, so callers and the API's
# 503 mapping see ``sqlalchemy.exc.DBAPIError`` subclasses as usual.


@lru_cache(maxsize=64)
def _row_type(names: tuple[str, ...]) -> type:
    """A tuple class with an attribute per column and ``_mapping``, like a SQLAlchemy ``Row`` (read-only)."""
    base = namedtuple("DriverRow", names)  # type: ignore[misc]

    class DriverRow(base):  # type: ignore[valid-type,misc]
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(self._fields, self, strict=True))

    return DriverRow


_NAMES: dict[str, tuple[str, ...]] = {}  # result column names per prepared statement (its SQL lists them)


def _column_names(statement_name: str, description: Any) -> tuple[str, ...]:
    names = _NAMES.get(statement_name)
    if names is None or len(names) != len(description):
        names = _NAMES[statement_name] = tuple([column[0] for column in description])
    return names


def _run_on_driver(connection: Connection, statement: PreparedStatement, params: dict[str, Any],
                   fetch: bool | str) -> Any:
    sql, values = statement.execute_call(params)
    dbapi_connection = connection.connection.dbapi_connection
    cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, values)
        if not fetch:
            return cursor.rowcount
        if fetch == "all":
            names = _column_names(statement.name, cursor.description)
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        if fetch == "tuples":
            return cursor.fetchall()
        row = cursor.fetchone()
        if row is None:
            return None
        return _row_type(_column_names(statement.name, cursor.description))(*row)
    except connection.dialect.loaded_dbapi.Error as exc:
        if connection.dialect.is_disconnect(exc, dbapi_connection, cursor):
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(sql, values, exc, connection.dialect.loaded_dbapi.Error,
                                         dialect=connection.dialect) from exc
    finally:
        cursor.close()


def run_prepared(connection: Connection, statement: PreparedStatement, params: dict[str, Any]) -> int:
    """Run a statement that returns no rows, prepared, on the driver's cursor; its row count."""
    prepare_once(connection, statement)
    return int(_run_on_driver(connection, statement, params, fetch=False))


@dataclass(frozen=True)
class PreparedQuery:
    """A hot read, prepared and run on the driver's cursor (psycopg2 decodes JSONB and returns aware
    timestamps, as the models' types do)."""

    statement: PreparedStatement

    @classmethod
    def build(cls, name: str, sql: str) -> PreparedQuery:
        return cls(PreparedStatement.build(name, sql))

    def first(self, connection: Connection, params: dict[str, Any]) -> Any:
        """The first row (attribute per column, ``_mapping``) or ``None``."""
        prepare_once(connection, self.statement)
        return _run_on_driver(connection, self.statement, params, fetch=True)

    def all(self, connection: Connection, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row, as column name → value dicts."""
        prepare_once(connection, self.statement)
        return _run_on_driver(connection, self.statement, params, fetch="all")  # type: ignore[no-any-return]

    def tuples(self, connection: Connection, params: dict[str, Any], *, prepare: bool = True) -> list[tuple[Any, ...]]:
        """Every row as a plain tuple in select-list order: for callers that read columns by position
        (no per-row dict). ``prepare=False`` sends the text instead, for a statement too rarely used to be
        worth a prepared statement on every connection."""
        if prepare:
            prepare_once(connection, self.statement)
            return _run_on_driver(connection, self.statement, params, fetch="tuples")  # type: ignore[no-any-return]
        return [tuple(row) for row in connection.execute(self.statement.text, params)]
