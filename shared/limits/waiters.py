"""Slot waiters: a released concurrency slot goes to the best run waiting for it (CONTRACT §5.8, §5.11).

A run refused for lack of a slot goes ``delayed`` for ``SLUICE_SLOT_RETRY_SECS`` + jitter (§5.8). On its
own that leaves a freed slot idle until some waiting run's retry comes due; with short calls a cap runs
at a fraction of its capacity. So the refusal also records the run as a *waiter* in Redis, and the slot
goes to the best waiter at once — before its ``scheduled_at``, a deliberate deviation from §5.11's "no
earlier than due" (docs/flow-control.md, "Decisions").

- Waiter sets: one ZSET per refusing limit (``redis_keys.slot_waiters_job`` for ``max_concurrency``,
  ``slot_waiters_key`` for ``max_concurrency_per_key``), member = run id, score = ``-priority × 1e13 +
  refusal ms`` (higher priority first, then the longest waiting). Added by the acquire script that refuses
  the run (``shared.limits.scripts``), so no release can run between the refusal and the registration;
  ``ZADD NX``: a run refused again keeps its place. Removed when popped or when the run is admitted. TTL
  1 day, refreshed on every add.
- A worker whose attempt ends hands its slot over itself (``worker.handoff``: the ending thread starts the
  best waiter). Here: the other releases — the reaper, a cancel, a worker that is stopping or whose
  hand-off failed — call ``SlotWaiters.wake``: one script call pops the best member of each set concerned
  and reads the Redis clock; each popped run is promoted by a conditional move (``shared.runs.moves``,
  from ``delayed`` only) that also requires its retry delay (``next_retry_at``) to be over, in one short
  transaction, then enqueued. A popped id whose run is no longer waiting for a slot (started, canceled,
  promoted by the sweeper) is dropped and the set popped again, at most ``MAX_POPS`` times per set.
- Everything here is a speed-up only: Redis losing a set, or a failed wake, leaves every waiter with its
  own ``scheduled_at`` retry (§5.8). Errors are logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared import redis_keys
from shared.runs.effects import Effects, Slot, apply_after_commit
from shared.runs.moves import move
from shared.runs.status import RunStatus

log = logging.getLogger("sluice.limits")

MAX_POPS = 8  # popped ids tried per set and release before giving up (stale ids are dropped)
WAKE_MESSAGE = "slot released"
_DELAYED = (RunStatus.DELAYED,)

# KEYS: waiter sets. Returns {now_ms, member of KEYS[1] or '', member of KEYS[2] or '', ...}.
POP_SCRIPT = """
local t = redis.call('TIME')
local out = {string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
for i, key in ipairs(KEYS) do
  local popped = redis.call('ZPOPMIN', key)
  out[i + 1] = popped[1] or ''
end
return out
"""


def slot_sets(slots: Iterable[Slot]) -> list[str]:
    """The waiter sets freed slots concern, without duplicates: the job's, and the key's for keyed runs."""
    keys: dict[str, None] = {}
    for job_id, concurrency_key in slots:
        keys[redis_keys.slot_waiters_job(job_id)] = None
        if concurrency_key:
            keys[redis_keys.slot_waiters_key(job_id, concurrency_key)] = None
    return list(keys)


def promote_waiter(session: Session, run_id: str, *, now: datetime, effects: Effects) -> bool:
    """``delayed → queued`` (event message ``slot released``) if the run is delayed and no retry delay
    (``next_retry_at``) is still ahead; the caller commits and applies ``effects``."""
    return move(session, run_id, RunStatus.QUEUED, now=now, effects=effects, from_=_DELAYED,
                guards=("retry_over",), message=WAKE_MESSAGE) is not None


class SlotWaiters:
    """Pops and promotes waiters; thread-safe (the script is registered once per client)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pop = client.register_script(POP_SCRIPT)

    def pop(self, keys: list[str]) -> tuple[datetime, list[str | None]]:
        """Pop the best member of each set in one round trip; returns (Redis clock, member or None each)."""
        reply = self._pop(keys=keys)
        now = datetime.fromtimestamp(int(reply[0]) / 1000, UTC)
        return now, [m.decode() if m else None for m in reply[1:]]

    def wake(self, slots: Iterable[Slot], *, open_session: Callable[[], AbstractContextManager[Session]],
             broker: Any, popped: tuple[list[str], datetime] | None = None) -> list[str]:
        """After a slot release is committed (and its lease dropped): promote the best waiter of each set
        concerned, enqueue the promoted runs; return their ids. Never raises.

        ``open_session`` gives the session for the promotion transaction (committed here), opened only if
        something was popped. ``popped``: waiters the caller already took from these sets (and the time it
        did), tried first; when one of them is promoted, the slot is theirs.
        """
        keys = slot_sets(slots)
        promoted: list[str] = []
        if not keys:
            return promoted
        try:
            with _Lazy(open_session) as lazy:
                if popped and popped[0]:
                    promoted += self._promote(lazy.session(), list(popped[0]), popped[1], broker)
                    if promoted:
                        return promoted
                for _ in range(MAX_POPS):
                    now, members = self.pop(keys)
                    if not any(members):
                        break
                    promoted += self._promote(lazy.session(), members, now, broker)
                    # Retry only the sets whose popped run could not be promoted.
                    keys = [k for k, m in zip(keys, members, strict=True) if m and m not in promoted]
                    if not keys:
                        break
        except (redis.exceptions.RedisError, OSError, SQLAlchemyError) as exc:
            log.warning("slot hand-off failed; waiters retry at scheduled_at", extra={
                "sets": len(keys), "error": type(exc).__name__})
        return promoted

    def _promote(self, session: Session, members: list[str | None], now: datetime, broker: Any) -> list[str]:
        effects = Effects()
        try:
            moved = [m for m in dict.fromkeys(m for m in members if m)
                     if promote_waiter(session, m, now=now, effects=effects)]
            session.commit()
            apply_after_commit(effects, broker)
        except BaseException:
            session.rollback()
            raise
        return moved


class _Lazy:
    """Opens the session on first use only: most releases find no waiter and need no database."""

    def __init__(self, open_session: Callable[[], AbstractContextManager[Session]]) -> None:
        self._open = open_session
        self._cm: AbstractContextManager[Session] | None = None
        self._session: Session | None = None

    def session(self) -> Session:
        if self._session is None:
            self._cm = self._open()
            self._session = self._cm.__enter__()
        return self._session

    def __enter__(self) -> _Lazy:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)

