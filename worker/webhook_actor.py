"""The ``deliver_webhook`` dramatiq actor (queue ``sluice.webhooks``): a thin shell around ``deliver``.

Registered by the worker's entry point with ``register_webhook_actor``; nothing is built at import time.
``max_retries=0``: a failed attempt is not an exception, and its retry is scheduled in PostgreSQL and
enqueued by ``shared.webhook_sweeper`` (dramatiq's retries would be lost with the message and cannot
follow the §5.15 schedule).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import dramatiq
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.config import Settings
from shared.messages import WEBHOOK_ACTOR, WEBHOOK_QUEUE
from worker.webhooks import CLAIM_LEASE_SECS, deliver

# The attempt's own deadline is 10 s; this only stops a wedged thread well after the claim lease.
TIME_LIMIT_MS = 2 * CLAIM_LEASE_SECS * 1000


def register_webhook_actor(broker: dramatiq.Broker, *, session_factory: sessionmaker[Session],
                           settings: Settings,
                           now_fn: Callable[[], datetime] = utcnow) -> dramatiq.Actor[Any, Any]:
    """Declare ``deliver_webhook`` on ``broker``; its messages carry one delivery id."""

    def deliver_webhook(delivery_id: str) -> None:
        deliver(delivery_id, session_factory=session_factory, settings=settings, now_fn=now_fn)

    declare = dramatiq.actor(actor_name=WEBHOOK_ACTOR, queue_name=WEBHOOK_QUEUE, broker=broker,
                             max_retries=0, time_limit=TIME_LIMIT_MS)
    return declare(deliver_webhook)
