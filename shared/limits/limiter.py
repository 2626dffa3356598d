"""Concurrency leases and sliding-log rate limits in Redis (CONTRACT §5.8, §5.9, §5.1 steps 6–7).

Workers call ``Limits.acquire`` right before starting an attempt and ``Limits.release`` on every exit from
``executing``; the scheduler's reaper calls ``release`` for runs whose worker died. Every operation is one
round trip (EVALSHA of a script registered once, or one pipeline). The scripts live in
``shared.limits.scripts``; Redis key names come from ``shared.redis_keys``.

Contracts:
- Concurrency: one lease per executing attempt, member ``run_id``, score = expiry (server ms). A run's
  own lease never counts against it, so re-acquiring refreshes instead of double counting. A keyed run
  needs room in the job ZSET and in its key's ZSET; unkeyed runs count only toward ``max_concurrency``.
- Rate limits: a start at ``t`` occupies ``[t, t + window)``; a rule admits while fewer than ``max`` marks
  are in ``(now - window, now]``, so no half-open interval of ``window`` ever holds more than ``max``.
- Atomicity: one script checks everything; a refusal records no lease and no mark, only (with
  ``waiter_priority``) the run in the refusing cap's slot-waiter set (``shared.limits.waiters``).
- Hand-over: an ending attempt's leases can pass to the next run without the slot ever being free
  (``end_attempt`` keeps them and names the best waiter; ``LimitRequest.hand_over`` drops them inside that
  run's acquire; ``worker.handoff``).
- Caveat for callers: leases are keyed by ``run_id`` alone, so a worker that loses the claim race for a
  run (§5.1 step 8) must not release: the winner shares that lease. Rate marks of an admitted acquire
  whose claim then fails stay recorded (overcounting is the safe direction).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from shared import redis_keys
from shared.limits.scripts import ACQUIRE_SCRIPT, COUNT_SCRIPT, EXTEND_SCRIPT, RELEASE_SCRIPT
from shared.limits.thread_scripts import LuaScript, ThreadScripts

# Key values longer than this (payload strings can be up to 1 MiB) are hashed so Redis keys stay small.
MAX_KEY_VALUE_CHARS = 256

_ADMITTED, _JOB_FULL, _KEY_FULL, _RATE_REFUSED = 0, 1, 2, 3


@dataclass(frozen=True)
class RateRule:
    """One sliding-log rule: at most ``max`` starts in any ``window_ms`` interval, logged in ZSET ``key``.

    ``name`` is ``'job'`` for the job-wide rule or the ``rate_limit_keys`` entry name (for reporting).
    """

    key: str
    max: int
    window_ms: int
    name: str

    def __post_init__(self) -> None:
        if self.max < 1 or self.window_ms < 1:
            raise ValueError(f"rate rule {self.name!r} needs max >= 1 and window_ms >= 1")


@dataclass(frozen=True)
class LimitRequest:
    """Everything one attempt start is checked against. ``None`` or ``0`` maxima mean unlimited.

    ``lease_ms`` is the effective timeout + ``SLUICE_LEASE_MARGIN_SECS``, in ms: a dead worker's lease
    frees itself after that. ``waiter_priority``: on a concurrency refusal, register the run as a slot
    waiter with this priority (``shared.limits.waiters``), in the same script. ``hand_over``: (run id,
    concurrency key) of an attempt of the same job that has just ended and still holds its leases; they
    are dropped first, atomically, so its slot passes to this run (admitted or not, they are gone after).
    """

    run_id: str
    job_id: str
    max_concurrency: int | None
    concurrency_key: str | None
    max_concurrency_per_key: int | None
    lease_ms: int
    rate_rules: tuple[RateRule, ...] = ()
    waiter_priority: int | None = None
    hand_over: tuple[str, str | None] | None = None

    def __post_init__(self) -> None:
        if self.lease_ms < 1:
            raise ValueError("lease_ms must be >= 1")


@dataclass(frozen=True)
class LimitDecision:
    """Outcome of ``Limits.acquire``.

    ``reason`` is ``None`` (admitted), ``'concurrency'`` or ``'rate_limit'``. ``retry_at_ms`` is set only for
    rate limits: the earliest server instant at which every refusing rule has room (never in the past);
    for concurrency the caller waits ``SLUICE_SLOT_RETRY_SECS`` + jitter. ``limit`` describes what refused,
    for the ``redelayed`` event's ``limit`` field. ``now_ms`` is the server clock the decision used.
    """

    admitted: bool
    reason: str | None
    retry_at_ms: int | None
    limit: dict[str, object] = field(default_factory=dict)
    now_ms: int | None = None
    # Admitted with every cap at most a quarter used (after this start) and no run waiting for a slot:
    # nothing is lost if this attempt's leases are released a little late (the worker batches them).
    roomy: bool = False


_ACQUIRE, _RELEASE = LuaScript(ACQUIRE_SCRIPT), LuaScript(RELEASE_SCRIPT)


class Limits:
    """Redis-backed concurrency leases and rate limits; safe to share between threads.

    ``per_thread_connections``: send the per-attempt scripts (``acquire``, ``end_attempt``) on one
    connection per thread (``shared.limits.thread_scripts``) instead of through the client's pool — for the
    worker, whose threads live as long as the process.
    """

    def __init__(self, redis: redis.Redis, *, per_thread_connections: bool = False) -> None:
        self._redis = redis
        # Registered once: each call is an EVALSHA (the client reloads the script after a Redis restart).
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._extend = redis.register_script(EXTEND_SCRIPT)
        self._count = redis.register_script(COUNT_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._scripts = ThreadScripts(redis)
        self._per_thread = per_thread_connections

    @property
    def client(self) -> redis.Redis:
        """The Redis client holding the leases (slot waiters live next to them, ``shared.limits.waiters``)."""
        return self._redis

    @property
    def scripts(self) -> ThreadScripts:
        """Per-thread script connections to the same server (``shared.limits.thread_scripts``)."""
        return self._scripts

    def acquire(self, req: LimitRequest, now_ms: int | None = None) -> LimitDecision:
        """Take the run's leases and record one start mark per rate rule — all of it, or nothing.

        Order of refusal: ``max_concurrency``, then ``max_concurrency_per_key``, then rate rules (the
        binding rule, i.e. the one with the latest ``retry_at_ms``, is reported). ``now_ms`` overrides the
        server clock (tests only).
        """
        key = req.concurrency_key or None  # "" is normalised to null by the API; be lenient anyway
        keys = [redis_keys.concurrency_job(req.job_id), redis_keys.slot_waiters_job(req.job_id)]
        if key is not None:
            keys += [redis_keys.concurrency_key(req.job_id, key), redis_keys.slot_waiters_key(req.job_id, key)]
        released_id, released_key = req.hand_over or ("", None)
        if released_key:
            keys.append(redis_keys.concurrency_key(req.job_id, released_key))
        args: list[str | int] = [
            _now_arg(now_ms), req.run_id, req.lease_ms, req.max_concurrency or 0,
            1 if key is not None else 0, req.max_concurrency_per_key or 0, os.urandom(6).hex(),
            "" if req.waiter_priority is None else req.waiter_priority, released_id, 1 if released_key else 0,
        ]
        # Rules sharing a ZSET trim by their largest window so one never drops marks another still counts.
        trim_ms: dict[str, int] = {}
        for rule in req.rate_rules:
            trim_ms[rule.key] = max(trim_ms.get(rule.key, 0), rule.window_ms)
        for rule in req.rate_rules:
            keys.append(rule.key)
            args += [rule.max, rule.window_ms, trim_ms[rule.key]]

        reply = (self._scripts.run(_ACQUIRE, keys, args) if self._per_thread
                 else self._acquire(keys=keys, args=args))
        status, rule_index, value, server_now = (int(x) for x in reply)
        if status == _ADMITTED:
            return LimitDecision(True, None, None, {}, server_now, roomy=value == 1)
        if status == _JOB_FULL:
            limit: dict[str, object] = {"kind": "max_concurrency", "max": req.max_concurrency,
                                        "in_use": value}
            return LimitDecision(False, "concurrency", None, limit, server_now)
        if status == _KEY_FULL:
            limit = {"kind": "max_concurrency_per_key", "key": key, "max": req.max_concurrency_per_key,
                     "in_use": value}
            return LimitDecision(False, "concurrency", None, limit, server_now)
        rule = req.rate_rules[rule_index - 1]
        limit = {"kind": "rate_limit", "name": rule.name, "max": rule.max,
                 "window_secs": _secs(rule.window_ms)}
        return LimitDecision(False, "rate_limit", value, limit, server_now)

    def end_attempt(self, run_id: str, job_id: str, concurrency_key: str | None, *,
                    hand_over: bool) -> str | None:
        """The end of an attempt, in one round trip: with ``hand_over`` and a run waiting for one of the
        slots it frees, pop the best such waiter and return its id, KEEPING the leases (the caller passes
        them on with ``LimitRequest.hand_over``, or calls ``release``); otherwise drop the leases and
        return ``None``."""
        keys = [redis_keys.concurrency_job(job_id), redis_keys.slot_waiters_job(job_id)]
        if concurrency_key:
            keys += [redis_keys.concurrency_key(job_id, concurrency_key),
                     redis_keys.slot_waiters_key(job_id, concurrency_key)]
        args = [run_id, 1 if hand_over else 0]
        reply = self._scripts.run(_RELEASE, keys, args) if self._per_thread else self._release(keys=keys, args=args)
        return reply[0].decode() if reply else None

    def release(self, run_id: str, job_id: str, concurrency_key: str | None) -> None:
        """Drop the run's job and per-key leases. Idempotent; rate marks stay (the start happened)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(redis_keys.concurrency_job(job_id), run_id)
        if concurrency_key:
            pipe.zrem(redis_keys.concurrency_key(job_id, concurrency_key), run_id)
        pipe.execute()

    def extend(self, run_id: str, job_id: str, concurrency_key: str | None, lease_ms: int,
               now_ms: int | None = None, *, recreate: bool = False) -> bool:
        """Move the run's leases to expire at now + ``lease_ms`` (never earlier than they already do).

        Returns ``False`` if a lease was no longer held. With ``recreate`` (the caller has just confirmed the
        attempt is running: the worker's heartbeat) a missing lease is created again, so an attempt whose
        lease Redis lost counts again; a cap it pushes over its limit only refuses new starts.
        """
        keys, args = _extend_call(run_id, job_id, concurrency_key, lease_ms, now_ms, recreate)
        return bool(self._extend(keys=keys, args=args))

    def extend_many(self, leases: list[tuple[str, str, str | None, int]], *, recreate: bool = False) -> None:
        """``extend`` for several ``(run_id, job_id, concurrency_key, lease_ms)`` in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for run_id, job_id, concurrency_key, lease_ms in leases:
            keys, args = _extend_call(run_id, job_id, concurrency_key, lease_ms, None, recreate)
            self._extend(keys=keys, args=args, client=pipe)
        pipe.execute()

    def slots_in_use(self, job_id: str, concurrency_key: str | None = None,
                     now_ms: int | None = None) -> int:
        """Live (unexpired) leases of the job, or of one ``concurrency_key`` of it when given."""
        key = (redis_keys.concurrency_key(job_id, concurrency_key) if concurrency_key
               else redis_keys.concurrency_job(job_id))
        return int(self._count(keys=[key], args=[_now_arg(now_ms)]))

    def starts_in_window(self, job_id: str, window_secs: int, now_ms: int) -> int:
        """Attempt starts of the job counted in its rate window (``rate_limit_max``) ending at ``now_ms``."""
        return int(self._redis.zcount(redis_keys.rate_job(job_id), f"({now_ms - window_secs * 1000}", "+inf"))


def rate_rules_for(job_id: str, rate_limit_max: int | None, rate_limit_window_secs: int | None,
                   rate_limit_keys: list[dict[str, object]], metadata: Mapping[str, str],
                   tags: Mapping[str, str], payload: object) -> tuple[RateRule, ...]:
    """The rate rules that apply to one run (§5.9), job rule first.

    The job rule applies when both ``rate_limit_max`` and ``rate_limit_window_secs`` are set (non-zero).
    Each ``rate_limit_keys`` entry applies when the run has a value for its ``name``: looked up in
    ``metadata``, then ``tags`` (presence counts, even ``""``), then the payload's top-level field if it is
    a string or a number (numbers in JSON text form, ``json.dumps``; booleans are not numbers). Values
    longer than ``MAX_KEY_VALUE_CHARS`` are replaced by ``sha256:<hex>`` in the key.
    """
    rules: list[RateRule] = []
    if rate_limit_max and rate_limit_window_secs:
        rules.append(RateRule(redis_keys.rate_job(job_id), rate_limit_max, rate_limit_window_secs * 1000,
                              "job"))
    for entry in rate_limit_keys:
        name = str(entry["name"])
        value = _key_value(name, metadata, tags, payload)
        if value is None:
            continue
        rules.append(RateRule(redis_keys.rate_key(job_id, name, value), _as_int(entry["max"]),
                              _as_int(entry["window_secs"]) * 1000, name))
    return tuple(rules)


def _key_value(name: str, metadata: Mapping[str, str], tags: Mapping[str, str],
               payload: object) -> str | None:
    if name in metadata:
        value = str(metadata[name])
    elif name in tags:
        value = str(tags[name])
    elif isinstance(payload, dict) and name in payload:
        found = payload[name]
        if isinstance(found, str):
            value = found
        elif isinstance(found, int | float) and not isinstance(found, bool):
            value = json.dumps(found)
        else:
            return None
    else:
        return None
    if len(value) > MAX_KEY_VALUE_CHARS:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return value


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def _now_arg(now_ms: int | None) -> str:
    return "" if now_ms is None else str(int(now_ms))


def _extend_call(run_id: str, job_id: str, concurrency_key: str | None, lease_ms: int, now_ms: int | None,
                 recreate: bool) -> tuple[list[str], list[str | int]]:
    keys = [redis_keys.concurrency_job(job_id)]
    if concurrency_key:
        keys.append(redis_keys.concurrency_key(job_id, concurrency_key))
    return keys, [_now_arg(now_ms), run_id, lease_ms, "1" if recreate else "0"]


def _secs(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000
