"""Every Redis key Sluice writes, one function per kind, all under the ``sluice:`` prefix.

The README's key map documents each pattern and its TTL. Dramatiq's own queue keys (``dramatiq:*``)
are not ours and are listed there separately.
"""

from __future__ import annotations

from typing import Any

PREFIX = "sluice:"


def redis_db(client: Any) -> int:
    """The DB index a redis-py client uses (for names that Redis does not scope by DB)."""
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def concurrency_job(job_id: str) -> str:
    """ZSET run_id -> lease expiry (unix ms): executing attempts of a job (``max_concurrency``).

    Every admitted attempt holds a lease here, even when the job is unlimited. TTL: PEXPIREd on each
    acquire/extend to the latest lease expiry - now + 1 s, so it never outlives its last lease by much.
    """
    return f"{PREFIX}conc:job:{job_id}"


def concurrency_key(job_id: str, key: str) -> str:
    """ZSET run_id -> lease expiry (unix ms) per ``concurrency_key`` (``max_concurrency_per_key``).

    Written for every keyed attempt. TTL: like ``concurrency_job`` (latest lease expiry - now + 1 s).
    """
    return f"{PREFIX}conc:key:{job_id}:{key}"


def rate_job(job_id: str) -> str:
    """ZSET of start marks (score = unix ms) in the job's sliding window (``rate_limit_max``).

    Members ``<run_id>:<ms>:<token>`` (unique per start). TTL: window + 1 s, renewed on each start.
    """
    return f"{PREFIX}rate:job:{job_id}"


def rate_key(job_id: str, name: str, value: str) -> str:
    """ZSET of start marks for one ``rate_limit_keys`` entry and one key value.

    Same members and TTL as ``rate_job`` (window + 1 s, renewed on each start). Values longer than 256
    chars arrive here as ``sha256:<hex>`` (see ``shared.limits.limiter.rate_rules_for``). The name is
    written with ``%`` and ``:`` percent-encoded (``%25``, ``%3A``), so the first ``:`` after it ends it and
    no two (name, value) pairs share a key; a name without either character reads as it is.
    """
    return f"{PREFIX}rate:key:{job_id}:{_encode_part(name)}:{value}"


def _encode_part(text: str) -> str:
    """``text`` without ``:``: ``%`` → ``%25`` first, then ``:`` → ``%3A`` (reversible, injective)."""
    return text.replace("%", "%25").replace(":", "%3A")


def run_cancel(run_id: str) -> str:
    """String flag set when an executing run is canceled, so its worker stops waiting (§5.17)."""
    return f"{PREFIX}cancel:{run_id}"


def api_rate(key_id: str, window_start: int) -> str:
    """Counter of API requests for one key in one fixed window (``SLUICE_API_RATE_LIMIT``)."""
    return f"{PREFIX}api-rate:{key_id}:{window_start}"


def slot_waiters_job(job_id: str) -> str:
    """ZSET run_id -> waiter score: runs re-delayed because the job's ``max_concurrency`` was full.

    Score = ``-priority * 1e13 + refusal time (server ms)``, so ZPOPMIN yields the highest priority, then
    the longest waiting (``shared.limits.waiters``). Added by the acquire script that refuses the run
    (``shared.limits.scripts``); removed when popped by a slot release or when the run is admitted.
    TTL: refreshed to 1 day on every add (a job whose slots are never released again leaves no litter).
    """
    return f"{PREFIX}waiters:job:{job_id}"


def slot_waiters_key(job_id: str, key: str) -> str:
    """ZSET like ``slot_waiters_job``, for runs refused by ``max_concurrency_per_key`` on one
    ``concurrency_key``. Same score, removal and TTL (1 day, refreshed on every add)."""
    return f"{PREFIX}waiters:key:{job_id}:{key}"


def queue_wake(namespace: str, queue_name: str) -> str:
    """LIST of wake tokens for a broker queue's idle consumers (``shared.messages``), blocked on it in BLPOP.

    Pushed by the enqueue script with the messages (one token per message, at most 256), trimmed to 256.
    TTL: 60 s, renewed on every push (idle consumers look at the queue before they block, so an old token
    wakes nobody who needs it).
    """
    return f"{PREFIX}wake:{namespace}:{queue_name}"


def consumer_stop(namespace: str, broker_id: str) -> str:
    """LIST holding one token per queue when a worker process starts shutting down: its idle consumers,
    blocked in BLPOP on it and their queue's wake list, return at once. TTL: 10 s from the push."""
    return f"{PREFIX}wake:{namespace}:stop:{broker_id}"


def scheduler_due_channel(db: int) -> str:
    """Pub/sub channel (not a key: nothing stored, no TTL) on which API and worker processes announce the
    epoch ms at which they gave the scheduler work (a delayed run's due time, a webhook retry); schedulers
    subscribe and wake then (``scheduler.notices``). Pub/sub ignores DB indexes, so the channel names the
    deployment's Redis DB."""
    return f"{PREFIX}scheduler:due:{db}"
