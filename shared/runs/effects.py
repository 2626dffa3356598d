"""After-commit work a unit of work gathers: runs to enqueue, webhook deliveries to send, canceled attempts
to signal, freed slots, and the earliest instant it gave the scheduler work for (a delayed run's due time),
announced to the sleeping scheduler (``shared.due_announcer``).

Enqueueing happens only after the commit, so a worker never sees a message for a row it cannot read
yet. A failed enqueue never fails the caller: the run is safely ``queued`` in PostgreSQL and the
scheduler's sweep re-creates its message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from shared.due_announcer import announce_due
from shared.messages.enqueue import enqueue_runs, enqueue_webhooks

log = logging.getLogger("sluice.effects")

Slot = tuple[str, str | None]  # (job id, concurrency key or None): what a released lease frees
CanceledAttempt = tuple[str, str, str | None]  # (run id, job id, concurrency key) of a canceled executing run


@dataclass
class Effects:
    """Run ids to enqueue, webhook deliveries to send and slots freed, gathered until the commit."""

    enqueue: list[str] = field(default_factory=list)
    webhooks: list[str] = field(default_factory=list)
    wake_slots: list[Slot] = field(default_factory=list)  # handed to waiting runs (shared.limits.waiters)
    # Executing runs canceled (a cancel, a forced job delete): their workers are signalled, their leases
    # released (``shared.runs.actions.signal_canceled``).
    canceled_attempts: list[CanceledAttempt] = field(default_factory=list)
    # A forced job delete cancels runs without webhooks.
    suppress_webhooks: bool = False
    due: datetime | None = None  # the earliest instant the scheduler has new work at (``note_due``)

    def note_due(self, at: datetime | None) -> None:
        """The scheduler has work at ``at`` (a delayed run falls due)."""
        if at is not None and (self.due is None or at < self.due):
            self.due = at


def apply_after_commit(effects: Effects, broker: Any) -> None:
    """Enqueue the runs and webhook deliveries ``effects`` gathered; never raises for Redis errors."""
    if effects.enqueue:
        try:
            enqueue_runs(broker, effects.enqueue)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("enqueue failed; the sweeper will re-enqueue", extra={
                "runs": len(effects.enqueue), "error": type(exc).__name__})
    if effects.webhooks:
        try:
            enqueue_webhooks(broker, effects.webhooks)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("webhook enqueue failed; the sweeper will retry", extra={
                "deliveries": len(effects.webhooks), "error": type(exc).__name__})
    if effects.due is not None:
        announce_due(broker, effects.due)  # best effort: the scheduler's periodic sweep is the safety net
    effects.enqueue.clear()
    effects.webhooks.clear()
    effects.due = None
