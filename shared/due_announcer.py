"""Announcing to a sleeping scheduler when new work falls due (a delayed run, a webhook retry).

After its commit, a unit of work that gave the scheduler work ``PUBLISH``es the earliest such instant (epoch
ms) on ``shared.redis_keys.scheduler_due_channel``; the scheduler's maintenance loop listens
(``scheduler.notices``) and runs promotion and webhook retries then. Best effort and never raising: a
scheduler not listening finds the work at its next periodic sweep.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime
from typing import Any

import redis

from shared import redis_keys

# An instant is not announced when this process announced one still ahead and at most this much later: the
# scheduler wakes then and reads every due time from PostgreSQL, so the work is at most this late. A stream
# of re-delays with jittered retry times then costs about two PUBLISHes per second per process, and the
# scheduler about as many wake-ups (the contract's promotion bound is 2 s after due).
ANNOUNCE_SLACK_MS = 500


class DueAnnouncer:
    """One per process (the broker holds it): publishes due times, skipping those already covered."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._channel = redis_keys.scheduler_due_channel(redis_keys.redis_db(client))
        self._announced_ms = 0  # the latest instant announced
        self._lock = threading.Lock()

    def announce(self, at: datetime) -> None:
        at_ms = int(at.timestamp() * 1000)
        with self._lock:
            if time.time() * 1000 < self._announced_ms <= at_ms + ANNOUNCE_SLACK_MS:
                return
            self._announced_ms = at_ms
        with contextlib.suppress(redis.RedisError, OSError):
            self._client.publish(self._channel, str(at_ms))


def announce_due(broker: Any, at: datetime) -> None:
    """Announce ``at`` through the broker's announcer (a Sluice broker has one per process), or, for any other
    dramatiq Redis broker, through a one-off announcer on its client."""
    announcer = getattr(broker, "due_announcer", None) or DueAnnouncer(broker.client)
    announcer.announce(at)
