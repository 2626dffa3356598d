"""Commit a unit of work, then carry out its after-commit effects (enqueue runs, send webhooks).

Enqueueing happens only after the commit, so a worker never sees a message for a row it cannot read
yet. A failed enqueue never fails the caller: the run is safely ``queued`` in PostgreSQL and the
sweeper (``scheduler.sweeps``) re-creates its message (§4.2 step 10, §5.1).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import redis
from sqlalchemy.orm import Session

from shared.messages import enqueue_runs, enqueue_webhooks
from shared.runs.transitions import Effects

log = logging.getLogger("sluice.effects")


def commit_and_apply(session: Session, effects: Effects, broker: Any) -> None:
    session.commit()
    apply_after_commit(effects, broker)
    if effects.wake_slots:  # released slots (reaper, cancel): hand them to waiting runs (shared.limits.waiters)
        wake_slots(session, effects, broker)


def wake_slots(session: Session, effects: Effects, broker: Any) -> None:
    """Promote the best waiter of each freed slot, in a new short transaction on ``session`` (committed),
    through the broker's Redis client (the one holding leases and waiter sets). Never raises."""
    from shared.limits.waiters import SlotWaiters  # it commits through this module

    slots, effects.wake_slots = list(effects.wake_slots), []
    SlotWaiters(broker.client).wake(slots, open_session=lambda: nullcontext(session), broker=broker)


def apply_after_commit(effects: Effects, broker: Any) -> None:
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
    effects.enqueue.clear()
    effects.webhooks.clear()
