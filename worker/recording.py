"""The worker's writes of a run's status: one statement when it can be, a transaction when hooks are due.

A move from the worker (an attempt's outcome, a re-delay, an expiry at pick time) is first sent alone on
the thread's autocommit connection (``shared.runs.moves.move_alone``): one round trip. A terminal move whose
job has a webhook or dependents needs the terminal hooks in the same transaction; then it is made again
with ``shared.runs.moves.move`` in a ``Session``, committed, and its effects applied (enqueues, webhooks,
freed slots).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects, apply_after_commit
from shared.runs.moves import Events, move, move_alone
from shared.runs.status import TERMINAL, RunStatus
from worker.connection import ThreadConnection


class Recorder:
    """Writes moves for the worker; thread-safe."""

    def __init__(self, connection: ThreadConnection, session_factory: sessionmaker[Session], broker: Any) -> None:
        self._connection = connection
        self._session_factory = session_factory
        self._broker = broker

    def move(self, run_id: str, to: RunStatus, *, now: datetime, from_: RunStatus,
             values: dict[str, Any] | None = None, where: dict[str, Any] | None = None,
             guards: tuple[str, ...] = (), events: Events | None = None) -> bool:
        """Move ``run_id`` from ``from_`` to ``to`` if it matches; whether it moved."""
        alone = Effects()
        if move_alone(self._connection.first, run_id, to, now=now, effects=alone, from_=from_, values=values,
                      where=where, guards=guards, events=events) is not None:
            apply_after_commit(alone, self._broker)  # a re-delay or retry: its due time, to the scheduler
            return True
        if to not in TERMINAL:
            return False  # alone, a non-terminal move only fails by not matching
        effects = Effects()
        session = self._session_factory()
        try:
            moved = move(session, run_id, to, now=now, effects=effects, from_=(from_,), values=values, where=where,
                         guards=guards, events=events)
            commit_and_apply(session, effects, self._broker)
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        return moved is not None

    def session(self) -> Session:
        """A session for reads the start needs (a version snapshot); the caller closes it."""
        return self._session_factory()
