"""Each worker thread's own database connection, for the statements of an attempt.

An attempt's writes are, in the common case, two statements that are each a whole transaction: its start
(``worker.start``) and its outcome (``shared.runs.moves.move_alone``). Sent on an autocommit connection,
each costs one round trip — no ``BEGIN``/``COMMIT``, no session, no ORM — and PostgreSQL still applies it
atomically. A start that must stay undoable until the Redis limit script has answered is a short
transaction of two round trips on the same connection (``begin_first``, then ``commit`` or ``rollback``).
Anything that needs more statements (terminal hooks, snapshot reads) uses a ``Session`` from the pool.

Each thread keeps one pooled connection checked out for its lifetime and prepares each statement once on
it, in the pool's one registry of prepared names (``shared.db.prepared.prepared_names``), which every
other path preparing on that connection shares. A connection error invalidates the connection (the next
call checks out a fresh one) and is re-raised: the statement either committed or did not, exactly like a
failed ``COMMIT``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.db.prepared import PreparedStatement, prepare_sql, prepared_names

log = logging.getLogger("sluice.worker")


class _Held:
    def __init__(self, engine: Engine) -> None:
        self.proxy = engine.raw_connection()
        self.dbapi: Any = cast(Any, self.proxy.dbapi_connection)  # psycopg2's (never None while held)
        self.dbapi.autocommit = True
        # These statements only look rows up by key or walk ix_runs_ready. With the statistics of a freshly
        # filled table ("empty") the planner picks sequential scans of runs instead, and a prepared generic
        # plan keeps them until the next ANALYZE: O(table) per attempt through a whole backlog.
        self.cursor: Any = self.dbapi.cursor()  # reused by every statement of this thread
        # Generic plans only: the start statement is large (planning it takes milliseconds, many times its
        # execution), and its plan does not depend on the values it is sent with.
        self.cursor.execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
        self.prepared: set[str] = prepared_names(self.proxy.info)
        self.used = False  # a statement was sent on it (a fresh connection that fails is not retried)


def _autocommit_off(dbapi_connection: Any, _record: Any) -> None:
    """Pool check-in: a connection handed back (a thread ended, tests) is an ordinary one again:
    transactional, default planner settings. Its prepared statements stay, and so do their names."""
    if dbapi_connection is None or dbapi_connection.closed or not dbapi_connection.autocommit:
        return
    with contextlib.suppress(Exception), dbapi_connection.cursor() as cursor:  # a broken one is discarded anyway
        cursor.execute("RESET enable_seqscan; RESET plan_cache_mode")
    if not dbapi_connection.closed:  # the RESET may have found the server gone (it closes the connection)
        dbapi_connection.autocommit = False


class ThreadConnection:
    """Runs ``PreparedStatement``s on the calling thread's connection; thread-safe (one connection per thread)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._error = engine.dialect.loaded_dbapi.Error
        self._local = threading.local()
        if not sa.event.contains(engine, "checkin", _autocommit_off):
            sa.event.listen(engine, "checkin", _autocommit_off)

    def first(self, statement: PreparedStatement, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Execute ``statement`` as a transaction of its own; its first row."""
        return self._send(statement, params, "{}")

    def begin_first(self, statement: PreparedStatement, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Open a transaction with ``statement`` (``BEGIN`` travels with it); its first row. End it with
        ``commit`` or ``rollback``. On an error the transaction is rolled back (or the connection dropped)."""
        return self._send(statement, params, "BEGIN; {}", in_transaction=True)

    def then_first(self, statement: PreparedStatement, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Another statement in the transaction ``begin_first`` opened; its first row."""
        return self._send(statement, params, "{}", in_transaction=True, resend=False)

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

    def _send(self, statement: PreparedStatement, params: dict[str, Any], frame: str, *,
              in_transaction: bool = False, resend: bool = True) -> tuple[Any, ...] | None:
        """A connection held since an earlier statement may have died meanwhile (PostgreSQL restarted, the
        backend was terminated): when it turns out closed, the statement is sent once more on a fresh one.
        Every statement sent here is a conditional move, so one that did run before the connection broke
        finds its row moved the second time and changes nothing. Never inside a transaction already open
        (``resend=False``): a new connection would run the statement outside it."""
        held = self._held()
        reused = held.used
        try:
            return self._execute(held, statement, params, frame)
        except self._error as exc:
            stale = reused and bool(held.dbapi.closed)
            self._failed(held, exc, in_transaction)
            if not (stale and resend):
                raise
        log.warning("database connection was closed; sending again on a new one",
                    extra={"statement": statement.name})
        held = self._held()
        try:
            return self._execute(held, statement, params, frame)
        except self._error as exc:
            self._failed(held, exc, in_transaction)
            raise

    @staticmethod
    def _execute(held: _Held, statement: PreparedStatement, params: dict[str, Any],
                 frame: str) -> tuple[Any, ...] | None:
        cursor = held.cursor
        held.used = True
        if statement.name not in held.prepared:
            cursor.execute(prepare_sql(statement))
            held.prepared.add(statement.name)
        sql, values = statement.execute_call(params)
        cursor.execute(frame.format(sql), values)
        row = cursor.fetchone() if cursor.description is not None else None
        return None if row is None else tuple(row)

    def _end(self, command: str) -> None:
        held = self._held()
        try:
            held.cursor.execute(command)
        except self._error as exc:
            self._failed(held, exc, True)
            raise

    def _failed(self, held: _Held, exc: Exception, in_transaction: bool) -> None:
        if isinstance(exc, self._engine.dialect.loaded_dbapi.OperationalError) or held.dbapi.closed:
            self._drop(held)
        elif in_transaction:  # an aborted transaction: end it so the connection is usable again
            try:
                held.cursor.execute("ROLLBACK")
            except self._error:
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
