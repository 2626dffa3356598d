"""Commit a unit of work, then carry out its after-commit effects: enqueue runs, send webhooks, signal the
workers of canceled attempts (and free their leases), and hand slots freed by the unit of work (reaper,
cancel) to the runs waiting for them."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from sqlalchemy.orm import Session

from shared.limits.waiters import SlotWaiters
from shared.runs.actions import signal_canceled
from shared.runs.effects import Effects, apply_after_commit


def commit_and_apply(session: Session, effects: Effects, broker: Any) -> None:
    session.commit()
    apply_after_commit(effects, broker)
    if effects.canceled_attempts:  # before the wake below: the canceled attempts' leases are released first
        canceled, effects.canceled_attempts = list(effects.canceled_attempts), []
        signal_canceled(broker.client, canceled)
    if effects.wake_slots:
        # A new short transaction on ``session``, through the broker's Redis client (the one holding
        # leases and waiter sets). Never raises.
        slots, effects.wake_slots = list(effects.wake_slots), []
        SlotWaiters(broker.client).wake(slots, open_session=lambda: nullcontext(session), broker=broker)
