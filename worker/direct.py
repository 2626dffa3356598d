"""Single-statement transactions for the attempt hot path: one autocommit DBAPI connection per thread.

The common attempt is two writes, each of them one statement that is a whole transaction by itself: the
claim that also starts the attempt (``worker.fast_start``) and the outcome (``shared.runs.moves``). Run on
an autocommit connection, each is one round trip — no ``BEGIN``/``COMMIT`` of its own, no session, no ORM
— and PostgreSQL still applies it atomically (a statement is its own transaction; its row locks live
until it ends). A start that must stay undoable until its Redis limit check has answered
(``worker.limited_start``) is a short transaction of two round trips on the same connection. Anything else
that needs more than one statement (windows, terminal hooks, holding a run) keeps using a ``Session``.

Each worker thread keeps one pooled connection checked out for its lifetime (the engine's ``connect``
hooks, e.g. ``steer_claim_plans``, have run on it) and prepares each statement once on it. A connection
error invalidates the connection (the next call checks out a fresh one) and is re-raised: the statement
either committed or did not, exactly like a failed ``COMMIT``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.db.prepared import HotStatement

_PREPARED_KEY = "sluice_direct_prepared"


class _Held:
    def __init__(self, engine: Engine) -> None:
        self.proxy = engine.raw_connection()
        self.dbapi: Any = cast(Any, self.proxy.dbapi_connection)  # psycopg2's (never None while held)
        self.dbapi.autocommit = True
        # These statements only ever look rows up by key or walk ix_runs_ready. With the statistics of a
        # freshly filled table ("empty") the planner picks sequential scans of runs instead, and a prepared
        # generic plan keeps them until the next ANALYZE: O(table) per attempt through a whole backlog.
        self.cursor: Any = self.dbapi.cursor()  # reused by every statement of this thread
        self.cursor.execute("SET enable_seqscan = off")
        # Per DBAPI connection (the pool clears ``info`` when it replaces one): prepared statements live in
        # the database session, which outlives this holder if the connection goes back to the pool.
        self.prepared: set[str] = self.proxy.info.setdefault(_PREPARED_KEY, set())


def _autocommit_off(dbapi_connection: Any, _record: Any) -> None:
    """Pool check-in: a connection handed back (e.g. a holder garbage-collected) is an ordinary one again:
    transactional, default planner settings."""
    if dbapi_connection is None or dbapi_connection.closed or not dbapi_connection.autocommit:
        return
    with contextlib.suppress(Exception), dbapi_connection.cursor() as cursor:  # a broken one is discarded anyway
        cursor.execute("RESET enable_seqscan")
    dbapi_connection.autocommit = False


class DirectStatements:
    """Runs ``HotStatement``s as single-statement transactions (PostgreSQL only); thread-safe."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("direct statements need PostgreSQL")
        self._engine = engine
        self._local = threading.local()
        if not sa.event.contains(engine, "checkin", _autocommit_off):
            sa.event.listen(engine, "checkin", _autocommit_off)

    @classmethod
    def for_engine(cls, engine: Engine | None) -> DirectStatements | None:
        """``None`` where the database is not PostgreSQL (SQLite dev mode keeps the session path)."""
        return cls(engine) if engine is not None and engine.dialect.name == "postgresql" else None

    def first(self, statement: HotStatement, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Execute ``statement`` (prepared on first use on this thread's connection) as a transaction of
        its own; its first row."""
        return self._send(statement, params, "{}")

    # A transaction around one statement, for a start that must stay undoable across a Redis call
    # (worker.limited_start): ``BEGIN`` travels with the statement, then ``COMMIT`` or ``ROLLBACK`` follows;
    # one round trip more than the statement alone.

    def begin_first(self, statement: HotStatement, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Open a transaction with ``statement``; its first row. End it with ``commit`` or ``rollback``.
        On an error the transaction is rolled back (or the connection dropped)."""
        return self._send(statement, params, "BEGIN; {}", in_transaction=True)

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        """End the open transaction, if any, without its writes; never raises (a broken connection is
        dropped, which rolls back as well)."""
        with contextlib.suppress(Exception):
            self._end("ROLLBACK")

    def _held(self) -> _Held:
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Held(self._engine)
        return held

    def _send(self, statement: HotStatement, params: dict[str, Any], frame: str, *,
              in_transaction: bool = False) -> tuple[Any, ...] | None:
        held = self._held()
        cursor = held.cursor
        try:
            if statement.name not in held.prepared:
                cursor.execute(f"PREPARE {statement.name} AS {statement.positional_sql}")
                held.prepared.add(statement.name)
            sql, values = statement.execute_call(params)
            cursor.execute(frame.format(sql), values)
            row = cursor.fetchone() if cursor.description is not None else None
            return None if row is None else tuple(row)
        except self._engine.dialect.loaded_dbapi.Error as exc:
            self._failed(held, exc, in_transaction)
            raise

    def _end(self, command: str) -> None:
        held = self._held()
        try:
            held.cursor.execute(command)
        except self._engine.dialect.loaded_dbapi.Error as exc:
            self._failed(held, exc, True)
            raise

    def _failed(self, held: _Held, exc: Exception, in_transaction: bool) -> None:
        if isinstance(exc, self._engine.dialect.loaded_dbapi.OperationalError) or held.dbapi.closed:
            self._drop(held)
        elif in_transaction:  # an aborted transaction: end it so the connection is usable again
            try:
                held.cursor.execute("ROLLBACK")
            except self._engine.dialect.loaded_dbapi.Error:
                self._drop(held)

    def _drop(self, held: _Held) -> None:
        self._local.held = None
        with contextlib.suppress(Exception):  # the connection is being thrown away anyway
            held.proxy.invalidate()

    def close(self) -> None:
        """Give this thread's connection back (tests; worker threads just end with the process)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            self._local.held = None
            held.proxy.close()  # check-in resets it (_autocommit_off)
