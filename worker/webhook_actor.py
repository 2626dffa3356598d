"""The ``deliver_webhook`` dramatiq actor (queue ``sluice.webhooks``): a thin shell around ``deliver``.

Registered by the worker's entry point with ``register_webhook_actor``; nothing is built at import time.
No dramatiq retries (the broker has none): a failed attempt is not an exception, and its retry is
scheduled in PostgreSQL and enqueued by ``scheduler.webhook_sweeps`` (dramatiq's retries would be lost with
the message and cannot follow the §5.15 schedule). Each attempt carries its own 10 s deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import dramatiq
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.config import Settings
from shared.due_announcer import announce_due
from shared.messages.layout import WEBHOOK_ACTOR, WEBHOOK_QUEUE
from worker.http import PostFunction, post
from worker.webhooks import deliver

log = logging.getLogger("sluice.webhooks")


def register_webhook_actor(broker: dramatiq.Broker, *, session_factory: sessionmaker[Session],
                           settings: Settings, post_function: PostFunction = post,
                           now_fn: Callable[[], datetime] = utcnow) -> dramatiq.Actor[Any, Any]:
    """Declare ``deliver_webhook(delivery_id)`` on ``broker``; ``post_function`` is the worker's client's."""

    def deliver_webhook(delivery_id: str) -> None:
        try:
            retry_at = deliver(delivery_id, session_factory=session_factory, settings=settings, now_fn=now_fn,
                               http_post=post_function)
            if retry_at is not None:
                announce_due(broker, retry_at)  # the scheduler's sweep enqueues the retry then
        except Exception:
            # The delivery stays safely in PostgreSQL; the sweep re-enqueues it (after the claim lease if
            # an attempt was claimed). Re-raising would only park the message in dramatiq's dead letters.
            log.exception("webhook delivery failed", extra={"delivery_id": delivery_id})

    declare = dramatiq.actor(actor_name=WEBHOOK_ACTOR, queue_name=WEBHOOK_QUEUE, broker=broker)
    return declare(deliver_webhook)
