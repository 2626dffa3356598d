"""Server-side prepared statements for the statements run on every request or attempt (opt-in per engine).

psycopg2 sends every statement as text, so PostgreSQL parses and plans it on every execution. For the
worker's per-attempt statements against ``runs`` (14 indexes, a join for the claim) planning costs more
server CPU than executing (measured: claim 0.13 ms planning vs 0.05 ms executing, warm). A process that
calls ``enable_prepared_statements(engine)`` gets each hot statement ``PREPARE``d once per connection and
then ``EXECUTE``d; any other engine runs the same statements as plain text.

A prepared statement lives in the database session: the names prepared on a connection are remembered in
the pool's per-connection ``info`` dict (``prepared_names``: the one registry, which the worker threads'
own connections share), which SQLAlchemy clears when a connection is replaced. ``PREPARE``
is not transactional, so a rolled-back transaction keeps it. Not for a transaction-pooling PgBouncer in
front of the workers (connections there are not sessions); point the workers at PostgreSQL or a
session-pooling bouncer.
"""

from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult, Engine

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


def enable_prepared_statements(engine: Engine) -> None:
    """Make ``execute_prepared`` prepare statements on this engine's connections."""
    def on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_INFO_KEY] = set()

    sa.event.listen(engine, "connect", on_connect)


def prepared_names(info: dict[str, Any], *, create: bool = False) -> set[str] | None:
    """The names prepared on the database session of the pooled connection whose ``info`` this is: the one
    registry of every path that prepares statements (the pool clears ``info`` when it replaces a connection,
    and with it the names, as the new database session has none). ``None`` where the engine did not enable
    prepared statements, unless ``create``."""
    names: set[str] | None = info.get(_INFO_KEY)
    if names is None and create:
        names = info[_INFO_KEY] = set()
    return names


def prepare_sql(statement: PreparedStatement) -> str:
    return f"PREPARE {statement.name} AS {statement.positional_sql}"


def prepare_once(connection: Connection, statement: PreparedStatement) -> bool:
    """Prepare ``statement`` on this connection unless it already is; ``False`` where not enabled (then
    run the plain text). For callers that ``EXECUTE`` it themselves (e.g. through an ORM ``from_statement``)."""
    prepared = prepared_names(connection.info)
    if prepared is None:
        return False
    if statement.name not in prepared:
        connection.exec_driver_sql(prepare_sql(statement))
        prepared.add(statement.name)
    return True


def execute_prepared(connection: Connection, statement: PreparedStatement, params: dict[str, Any]) -> CursorResult[Any]:
    """Run ``statement``: ``EXECUTE`` of its prepared form where enabled (preparing it on first use on this
    connection), else the plain text."""
    if not prepare_once(connection, statement):
        return connection.execute(statement.text, params)
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
    """Run a statement that returns no rows — prepared and run on the driver's cursor where the engine
    enables prepared statements, else through SQLAlchemy; its row count."""
    if not prepare_once(connection, statement):
        return int(connection.execute(statement.text, params).rowcount)
    return int(_run_on_driver(connection, statement, params, fetch=False))


@dataclass(frozen=True)
class PreparedQuery:
    """A hot read: prepared and run on the driver's cursor where the engine enables prepared statements
    (driver values: psycopg2 decodes JSONB and returns aware timestamps), else the same SQL with typed
    result columns (so that SQLite and plain engines decode JSON and timestamps through the models' types)."""

    statement: PreparedStatement
    typed: sa.TextualSelect

    @classmethod
    def build(cls, name: str, sql: str, types: dict[str, Any],
              bind_types: dict[str, Any] | None = None) -> PreparedQuery:
        """``types``: result column types; ``bind_types``: parameter types the fallback must process (e.g.
        a timestamp compared with a column SQLite stores as text)."""
        text = sa.text(sql)
        if bind_types:
            text = text.bindparams(*(sa.bindparam(key, type_=value) for key, value in bind_types.items()))
        return cls(PreparedStatement.build(name, sql), text.columns(**types))

    def first(self, connection: Connection, params: dict[str, Any]) -> Any:
        """The first row (attribute per column, ``_mapping``) or ``None``."""
        if prepare_once(connection, self.statement):
            return _run_on_driver(connection, self.statement, params, fetch=True)
        return connection.execute(self.typed, params).first()

    def all(self, connection: Connection, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row, as column name → value dicts."""
        if prepare_once(connection, self.statement):
            return _run_on_driver(connection, self.statement, params, fetch="all")  # type: ignore[no-any-return]
        return [dict(row) for row in connection.execute(self.typed, params).mappings()]

    def tuples(self, connection: Connection, params: dict[str, Any], *, prepare: bool = True) -> list[tuple[Any, ...]]:
        """Every row as a plain tuple in select-list order: for callers that read columns by position
        (no per-row dict). ``prepare=False`` runs the text as the engines without prepared statements do."""
        if prepare and prepare_once(connection, self.statement):
            return _run_on_driver(connection, self.statement, params, fetch="tuples")  # type: ignore[no-any-return]
        return [tuple(row) for row in connection.execute(self.typed, params)]
