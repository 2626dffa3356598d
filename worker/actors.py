"""Dramatiq actors of the worker — the only place Sluice defines actors (STYLE.md).

Declared on a broker passed in (nothing is registered at import time). The actor is thin: the message is
a wake-up token carrying a run id and ``Runner.handle`` does the work.

Dramatiq's own safety nets are not installed (``shared.messages.broker``): Sluice retries through
PostgreSQL, attempts may last 86 400 s under their own deadline, and an old message is still a valid wake-up.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import redis

from shared.messages.layout import DISPATCH_ACTOR, DISPATCH_QUEUE
from worker.runner import Runner

log = logging.getLogger("sluice.worker")


def declare_dispatch_actor(broker: dramatiq.Broker, runner: Runner) -> dramatiq.Actor[Any, Any]:
    """Register ``dispatch_run(run_id)`` on ``sluice.runs`` for ``broker``."""
    def dispatch_run(run_id: str) -> None:
        try:
            runner.handle(run_id)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # Redis went away (a restart, a failover): an outage to report, not a bug to trace. The run is as
            # safe as in the case below, and starts once Redis (with its message and its limits) is back.
            log.warning("dispatch failed: Redis unavailable", extra={"run_id": run_id, "error": str(exc)})
        except Exception:
            # The run stays safely in PostgreSQL (queued, or executing until the reaper); the sweeper
            # re-creates its message. Re-raising would only park the message in dramatiq's dead letters.
            log.exception("dispatch failed", extra={"run_id": run_id})

    declare = dramatiq.actor(broker=broker, actor_name=DISPATCH_ACTOR, queue_name=DISPATCH_QUEUE)
    return declare(dispatch_run)
