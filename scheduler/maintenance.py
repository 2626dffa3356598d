"""The scheduler's maintenance loop: named periodic tasks over PostgreSQL and Redis (CONTRACT §5.1, §5.5,
§5.10, §5.11, §5.15).

Each task is one line in ``default_tasks``: a name, a period and a function ``(ctx, now) -> int`` (how many
rows it handled). Every run of a task is its own transaction; an exception is logged and the task runs
again at its next period, so one failing sweep never stops the others. A task that handled a full batch
runs again at once instead of waiting a period (a backlog drains at full speed).

Idle, the loop sleeps until something is due. A task with a ``next_work_in`` hint (the next delayed run,
the next expiry, the next stale heartbeat, the next webhook retry: one index lookup each) sleeps until then;
every task sleeps at most its period (``SLUICE_SWEEP_INTERVAL_SECS``, 5 s: the safety net for work nobody
announced). Work created meanwhile is announced by the process that created it (``scheduler.notices``):
the announced tasks (promotion, webhook retries) then run at the announced instant. Expiry is not announced
(a worker expires a run it picks; the sweep finds the rest at the next expiry it knows of, or within its
period).

All tasks are safe with several scheduler replicas: rows are taken ``FOR UPDATE SKIP LOCKED`` and a
duplicate run message is only a spare wake-up token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from scheduler.lease_sweeps import sweep_leaked_leases
from scheduler.notices import DueListener
from scheduler.reaper import REAP_BATCH, next_stale_in, reap_stale_attempts
from scheduler.sweeps import (
    EXPIRE_BATCH,
    PROMOTE_BATCH,
    RECHECK_RUNS,
    RECOVER_MAX,
    expire_unstarted,
    promote_due_delayed,
    recheck_waiting,
    recover_lost_messages,
    seconds_until_next_due,
    seconds_until_next_expiry,
)
from scheduler.webhook_sweeps import BATCH_SIZE as WEBHOOK_BATCH
from scheduler.webhook_sweeps import enqueue_due_webhooks, seconds_until_next_webhook
from shared.clock import utcnow
from shared.config import Settings
from shared.dependencies.gating import WaitingCursor
from shared.limits.limiter import Limits
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.retention import PRUNE_BATCH, prune_finished_runs

log = logging.getLogger("sluice.maintenance")


@dataclass
class MaintenanceContext:
    """What the tasks need; built once by the scheduler process."""

    settings: Settings
    session_factory: sessionmaker[Session]
    broker: Any
    redis: redis.Redis
    limits: Limits = field(init=False)
    waiting_cursor: WaitingCursor | None = None  # where the re-check of waiting runs goes on
    retention_cursor: str | None = None  # the job after which pruning goes on
    lease_cursor: str | None = None  # the job after which the leaked-lease sweep goes on

    def __post_init__(self) -> None:
        self.limits = Limits(self.redis)


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    every_secs: float
    run: Callable[[MaintenanceContext, datetime], int]
    batch: int | None = None  # a run that handles this many rows is followed at once by another
    # Optional: seconds until this task has work again (e.g. the next delayed run's due time), so the
    # loop can wake earlier than ``every_secs``; never earlier than MIN_WAKE_SECS.
    next_work_in: Callable[[MaintenanceContext, datetime], float | None] | None = None
    announced: bool = False  # other processes announce this task's new work (``scheduler.notices``)


MIN_WAKE_SECS = 0.02
STOP_CHECK_SECS = 1.0  # the loop looks at its stop event at least this often (memory only)
LEASE_SWEEP_SECS = 10.0  # a leaked lease blocks its slot at most about this long (per 200 capped jobs)
PRUNE_EVERY_SECS = 10.0  # between pruning passes that found less than a batch
RECHECK_WAITING_SECS = 30.0  # a missed dependency wake-up (see shared.dependencies.gating) is recovered within this


def _with_effects(ctx: MaintenanceContext, work: Callable[[Session, Effects], int]) -> int:
    with ctx.session_factory() as session:
        effects = Effects()
        handled = work(session, effects)
        commit_and_apply(session, effects, ctx.broker)
        return handled


def next_due_in(ctx: MaintenanceContext, now: datetime) -> float | None:
    with ctx.session_factory() as session:
        return seconds_until_next_due(session, now)


def next_expiry_in(ctx: MaintenanceContext, now: datetime) -> float | None:
    with ctx.session_factory() as session:
        return seconds_until_next_expiry(session, now)


def next_reap_in(ctx: MaintenanceContext, now: datetime) -> float | None:
    with ctx.session_factory() as session:
        return next_stale_in(session, now, ctx.settings)


def next_webhook_in(ctx: MaintenanceContext, now: datetime) -> float | None:
    with ctx.session_factory() as session:
        return seconds_until_next_webhook(session, now)


def expire_task(ctx: MaintenanceContext, now: datetime) -> int:
    return _with_effects(ctx, lambda s, e: expire_unstarted(s, now, e))


def promote_task(ctx: MaintenanceContext, now: datetime) -> int:
    return _with_effects(ctx, lambda s, e: promote_due_delayed(s, now, e))


def recover_task(ctx: MaintenanceContext, now: datetime) -> int:
    with ctx.session_factory() as session:
        return recover_lost_messages(session, now, ctx.broker)


def reap_task(ctx: MaintenanceContext, now: datetime) -> int:
    return _with_effects(ctx, lambda s, e: len(reap_stale_attempts(s, now, ctx.settings, ctx.limits, e)))


def webhooks_task(ctx: MaintenanceContext, now: datetime) -> int:
    with ctx.session_factory() as session:
        sent = enqueue_due_webhooks(session, now, ctx.broker)
        session.commit()
        return sent


def recheck_waiting_task(ctx: MaintenanceContext, now: datetime) -> int:
    """One page of waiting runs per pass, going on from where the last pass stopped; a full page is
    followed at once by the next (other tasks run in between)."""
    released = 0

    def work(session: Session, effects: Effects) -> int:
        nonlocal released
        released, looked_at, ctx.waiting_cursor = recheck_waiting(session, now, effects, after=ctx.waiting_cursor)
        return looked_at

    looked_at = _with_effects(ctx, work)
    if released:
        log.warning("released %d waiting runs whose wake-up was missed", released,
                    extra={"released": released})
    return looked_at


def lease_task(ctx: MaintenanceContext, now: datetime) -> int:
    with ctx.session_factory() as session:
        removed, ctx.lease_cursor = sweep_leaked_leases(session, ctx.redis, now, ctx.lease_cursor)
    return removed


def prune_task(ctx: MaintenanceContext, now: datetime) -> int:
    """One batch of finished runs past the retention (``shared.runs.retention``)."""
    assert ctx.settings.retention_days is not None
    cutoff = now - timedelta(days=ctx.settings.retention_days)
    with ctx.session_factory() as session:
        deleted, ctx.retention_cursor = prune_finished_runs(session, cutoff, ctx.retention_cursor)
        session.commit()
    return deleted


def default_tasks(settings: Settings) -> list[PeriodicTask]:
    """Expiry before promotion (an expired run is never enqueued), lost messages after both."""
    every = settings.sweep_interval_secs
    tasks = [
        PeriodicTask("expire_unstarted", every, expire_task, EXPIRE_BATCH, next_work_in=next_expiry_in),
        PeriodicTask("promote_delayed", every, promote_task, PROMOTE_BATCH, next_work_in=next_due_in, announced=True),
        PeriodicTask("recover_lost_messages", every, recover_task, RECOVER_MAX),
        PeriodicTask("reap_stale_attempts", every, reap_task, REAP_BATCH, next_work_in=next_reap_in),
        PeriodicTask("enqueue_due_webhooks", every, webhooks_task, WEBHOOK_BATCH, next_work_in=next_webhook_in,
                     announced=True),
        PeriodicTask("recheck_waiting", max(every, RECHECK_WAITING_SECS), recheck_waiting_task, RECHECK_RUNS),
        PeriodicTask("sweep_leaked_leases", max(every, LEASE_SWEEP_SECS), lease_task),
    ]
    if settings.retention_days:
        tasks.append(PeriodicTask("prune_retention", max(every, PRUNE_EVERY_SECS), prune_task, PRUNE_BATCH))
    return tasks


class MaintenanceLoop:
    """Runs each task when due (monotonic clock) until ``stop`` is set; see the module doc."""

    def __init__(self, ctx: MaintenanceContext, tasks: list[PeriodicTask] | None = None, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.ctx = ctx
        self.tasks = tasks if tasks is not None else default_tasks(ctx.settings)
        self._clock = clock
        self._next_at = {task.name: 0.0 for task in self.tasks}
        self._lock = threading.Lock()  # ``_next_at`` is also lowered by the announcements' thread
        self._woken = threading.Event()

    def run_due(self) -> float:
        """Run every task that is due; return seconds until the next one is."""
        for task in self.tasks:
            with self._lock:
                if time.monotonic() < self._next_at[task.name]:
                    continue
                self._next_at[task.name] = float("inf")  # an announcement during the run lowers it again
            handled = self._run_task(task)
            full = task.batch is not None and handled >= task.batch
            later = time.monotonic() + (0.0 if full else self._wait_for(task))
            with self._lock:
                self._next_at[task.name] = min(self._next_at[task.name], later)
        with self._lock:
            return max(0.0, min(self._next_at.values()) - time.monotonic())

    def on_due(self, at_epoch_secs: float) -> None:
        """Work falls due at ``at_epoch_secs`` (an announcement): the announced tasks run then."""
        at = time.monotonic() + max(0.0, at_epoch_secs - time.time())
        with self._lock:
            for task in self.tasks:
                if task.announced:
                    self._next_at[task.name] = min(self._next_at[task.name], at)
        self._woken.set()

    def _wait_for(self, task: PeriodicTask) -> float:
        if task.next_work_in is None:
            return task.every_secs
        try:
            hint = task.next_work_in(self.ctx, self._clock())
        except Exception:
            log.exception("maintenance wake-up hint failed", extra={"task": task.name})
            return task.every_secs
        if hint is None:
            return task.every_secs
        return min(task.every_secs, max(MIN_WAKE_SECS, hint))

    def _run_task(self, task: PeriodicTask) -> int:
        try:
            handled = task.run(self.ctx, self._clock())
        except Exception:
            log.exception("maintenance task failed; retrying next period", extra={"task": task.name})
            return 0
        if handled:
            log.info("maintenance task handled rows", extra={"task": task.name, "rows": handled})
        return handled

    def run(self, stop: threading.Event) -> None:
        """Listen for announcements (from before the first sweep on, so none is missed), then sweep."""
        listener = DueListener(self.ctx.redis, self.on_due)
        thread = listener.start(stop)
        listener.subscribed.wait(STOP_CHECK_SECS)
        try:
            while not stop.is_set():
                self._woken.wait(min(self.run_due(), STOP_CHECK_SECS))
                self._woken.clear()
        finally:
            thread.join(timeout=2 * STOP_CHECK_SECS)
