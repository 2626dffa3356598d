"""Putting a run in a slot-waiter set directly, as the acquire script does when a concurrency cap refuses it
(``shared.limits.scripts``, tested in ``test_limits.py``): for the tests of what happens to waiters next."""

from __future__ import annotations

import redis as redis_lib

from shared import redis_keys
from shared.db.models import Run
from shared.limits.scripts import PRIORITY_WEIGHT, WAITER_TTL_SECS


def waiter_score(priority: int, refused_ms: int) -> int:
    """Lower pops first: higher priority, then earlier refusal."""
    return -priority * PRIORITY_WEIGHT + refused_ms


def register_waiter(client: redis_lib.Redis, run: Run, limit_kind: str, refused_ms: int) -> None:
    """``run`` waits for a slot of the cap ``limit_kind`` (``max_concurrency`` or
    ``max_concurrency_per_key``) since ``refused_ms``: ``ZADD NX`` (a run refused again keeps its place), TTL
    refreshed."""
    if limit_kind == "max_concurrency":
        key = redis_keys.slot_waiters_job(run.job_id)
    else:
        assert limit_kind == "max_concurrency_per_key" and run.concurrency_key
        key = redis_keys.slot_waiters_key(run.job_id, run.concurrency_key)
    client.zadd(key, {run.id: waiter_score(run.priority, refused_ms)}, nx=True)
    client.expire(key, WAITER_TTL_SECS)
