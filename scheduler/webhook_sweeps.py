"""Webhook retries and lost-message recovery (CONTRACT §5.15): PostgreSQL decides when a delivery is due.

The webhook actor never retries through dramatiq. A failed attempt only writes the next due time
(``next_attempt_at``); this periodic sweep enqueues every ``pending`` delivery that is due and needs a
message. "Needs a message" is read from ``updated_at``, which every attempt and every enqueue here
bumps:

- ``updated_at < next_attempt_at``: nothing touched the row since it was scheduled (a retry that has
  come due, or a claimed attempt whose worker died and whose lease has run out) → enqueue now;
- otherwise a message was already sent (by ``commit_and_apply`` at creation, or by an earlier sweep). After
  ``RESEND_AFTER_SECS`` of silence the sweep looks for it in the queue (a delivery's message id is its own
  id): still waiting (a worker outage, a long queue) → nothing is sent; gone (a Redis restart, a crash
  between commit and enqueue) → it is sent again.

Each pass handles at most ``BATCH_SIZE`` deliveries, oldest due first, and marks every one it looked at
(``updated_at = now``), whether it sent a message or found one waiting, so the next pass goes on with the
ones after them: an outage with 100,000 pending deliveries costs one check per delivery per
``RESEND_AFTER_SECS``, and no duplicate messages.

A duplicate message is harmless: the worker claims an attempt with a conditional UPDATE.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import WebhookDelivery
from shared.messages.enqueue import enqueue_webhooks
from shared.messages.layout import WEBHOOK_QUEUE
from shared.messages.queue_state import messages_waiting

RESEND_AFTER_SECS = 30
BATCH_SIZE = 500


def enqueue_due_webhooks(session: Session, now: datetime, broker: Any, *, limit: int = BATCH_SIZE) -> int:
    """Enqueue a ``deliver_webhook`` message for each due ``pending`` delivery whose message is not
    waiting in the queue; return how many.

    Marks the rows (``updated_at = now``) and enqueues inside the caller's transaction, which the caller
    then commits. Enqueueing before the commit is safe here, unlike for runs: the rows were committed
    long ago and the worker's claim does not depend on the mark. If the enqueue raises, the caller
    rolls back and the next sweep tries again. Rows locked by a concurrent sweep are skipped.
    """
    resend_before = now - timedelta(seconds=RESEND_AFTER_SECS)
    ids = list(session.scalars(
        sa.select(WebhookDelivery.id)
        .where(WebhookDelivery.state == "pending",
               WebhookDelivery.next_attempt_at <= now,
               sa.or_(WebhookDelivery.updated_at < WebhookDelivery.next_attempt_at,
                      WebhookDelivery.updated_at <= resend_before))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ))
    if not ids:
        return 0
    # A message still queued or in flight (a claimed attempt whose worker died is re-queued by the
    # broker) is never sent twice.
    waiting = messages_waiting(broker, WEBHOOK_QUEUE, ids)
    session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids))
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return enqueue_webhooks(broker, [delivery_id for delivery_id in ids if delivery_id not in waiting])


def seconds_until_next_webhook(session: Session, now: datetime) -> float | None:
    """Seconds until ``enqueue_due_webhooks`` has a delivery to send (≤ 0 if it has one now); ``None`` if no
    delivery is pending. Each pending delivery is due at ``next_attempt_at`` if nothing touched it since it
    was scheduled, else ``RESEND_AFTER_SECS`` after the last touch (``ix_webhook_deliveries_due``)."""
    resend = WebhookDelivery.updated_at + sa.literal_column(f"interval '{RESEND_AFTER_SECS} seconds'")
    due_at = sa.case((WebhookDelivery.updated_at < WebhookDelivery.next_attempt_at, WebhookDelivery.next_attempt_at),
                     else_=sa.func.greatest(WebhookDelivery.next_attempt_at, resend))
    due = session.execute(sa.select(sa.func.min(due_at)).where(WebhookDelivery.state == "pending")).scalar()
    return None if due is None else (due - now).total_seconds()
