"""Dramatiq actors of the worker — the only place Sluice defines actors (STYLE.md).

Declared on a broker passed in (nothing is registered at import time). The actor is thin: the message is
a wake-up token carrying a run id and ``Runner.handle`` does the work.

Dramatiq's own safety nets are tuned on purpose: Sluice retries through PostgreSQL (``max_retries=0``),
and attempts may last 86 400 s, so the ``TimeLimit`` middleware (default 10 minutes, which would raise
inside a long call) gets a limit above any attempt. ``AgeLimit`` stays inactive (no ``max_age``): an old
message is still a valid wake-up.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq

from shared.messages.layout import DISPATCH_ACTOR, DISPATCH_QUEUE
from worker.runner import Runner

log = logging.getLogger("sluice.worker")


# Longer than the longest attempt (86 400 s) plus recording time: never the thing that ends an attempt.
DISPATCH_TIME_LIMIT_MS = (86_400 + 3_600) * 1000


def declare_dispatch_actor(broker: dramatiq.Broker, runner: Runner) -> dramatiq.Actor[Any, Any]:
    """Register ``dispatch_run(run_id)`` on ``sluice.runs`` for ``broker``."""
    def dispatch_run(run_id: str) -> None:
        try:
            runner.handle(run_id)
        except Exception:
            # The run stays safely in PostgreSQL (queued, or executing until the reaper); the sweeper
            # re-creates its message. Re-raising would only park the message in dramatiq's dead letters.
            log.exception("dispatch failed", extra={"run_id": run_id})

    declare = dramatiq.actor(broker=broker, actor_name=DISPATCH_ACTOR, queue_name=DISPATCH_QUEUE,
                             max_retries=0, time_limit=DISPATCH_TIME_LIMIT_MS)
    return declare(dispatch_run)
