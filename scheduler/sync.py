"""Reconcile the jobs table with the scheduler's in-memory entries (CONTRACT §6.4, §6.5).

The desired set is every enabled job with a ``cron``; each becomes one APScheduler *entry* (id = job id,
trigger ``CronTickTrigger``, our tick executor). Every ``SLUICE_SCHEDULER_SYNC_SECS`` the sync adds entries
for new jobs, replaces those whose ``cron``, ``timezone`` or ``schedule_changed_at`` moved, and removes
those disabled, deleted or unscheduled (the pattern of redash's ``tasks/schedule.py``).

Cheap at rest: it first reads a fingerprint (row count, newest ``updated_at`` and ``schedule_changed_at``)
and loads the schedule columns only when it moved, or every ``FULL_SYNC_SECS`` anyway in case an API host's
clock lags behind and its write did not move the maxima.

Catch-up (§6.4): an entry is created with its first tick strictly after the ``now`` of the sync, and every
tick at or before that ``now`` goes through the missed-tick check instead, so no tick falls between the two.
The check runs for new and replaced entries (a restart makes every entry new) and for jobs whose last
firing failed; it needs the tick of each job's newest cron run, read from the ``uq_runs_cron_tick`` index
(the key ends in the tick, so the greatest key is the newest tick).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from scheduler.fire import TickRequest
from scheduler.metrics import TICKS_SKIPPED
from scheduler.missed import find_missed_tick, floor_of, tick_of_key
from scheduler.trigger import CronTickTrigger
from shared.clock import format_ts
from shared.db.models import Job, Run

log = logging.getLogger("sluice.scheduler")

FULL_SYNC_SECS = 25.0
_ID_CHUNK = 1000


@dataclass(frozen=True)
class ScheduleRow:
    """What the scheduler needs to know about one scheduled job (never the full row)."""

    job_id: str
    cron: str
    timezone: str
    schedule_changed_at: datetime
    created_at: datetime

    @property
    def entry_key(self) -> tuple[str, str, datetime]:
        """The entry is rebuilt (and catch-up re-checked) when this changes."""
        return (self.cron, self.timezone, self.schedule_changed_at)


@dataclass
class SyncPlan:
    add: list[ScheduleRow] = field(default_factory=list)
    replace: list[ScheduleRow] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.remove)


def plan_sync(current: Mapping[str, ScheduleRow], desired: Mapping[str, ScheduleRow]) -> SyncPlan:
    """What to change so that the entries match ``desired`` (pure)."""
    plan = SyncPlan(remove=sorted(set(current) - set(desired)))
    for job_id, row in desired.items():
        known = current.get(job_id)
        if known is None:
            plan.add.append(row)
        elif known.entry_key != row.entry_key:
            plan.replace.append(row)
    return plan


def load_fingerprint(session: Session) -> tuple[Any, ...]:
    """A value that changes whenever a job is created, changed or deleted (one index-free aggregate)."""
    row = session.execute(sa.select(sa.func.count(), sa.func.max(Job.updated_at),
                                    sa.func.max(Job.schedule_changed_at)).select_from(Job)).one()
    return tuple(row)


def load_schedules(session: Session) -> dict[str, ScheduleRow]:
    """Every enabled job with a cron, as ``ScheduleRow`` by job id."""
    query = sa.select(Job.id, Job.cron, Job.timezone, Job.schedule_changed_at, Job.created_at).where(
        Job.enabled.is_(True), Job.cron.is_not(None))
    return {job_id: ScheduleRow(job_id, cron, timezone or "UTC", changed_at or created_at, created_at)
            for job_id, cron, timezone, changed_at, created_at in session.execute(query)}


def load_last_cron_ticks(session: Session, job_ids: Sequence[str]) -> dict[str, datetime]:
    """The tick of each job's newest cron run (jobs without one are absent). One index probe per job."""
    newest_key = (sa.select(Run.idempotency_key)
                  .where(Run.job_id == Job.id, Run.triggered_by == "cron", Run.idempotency_key.is_not(None))
                  .order_by(Run.idempotency_key.desc()).limit(1)
                  .correlate(Job).scalar_subquery())
    found: dict[str, datetime] = {}
    for start in range(0, len(job_ids), _ID_CHUNK):
        chunk = list(job_ids[start:start + _ID_CHUNK])
        for job_id, key in session.execute(sa.select(Job.id, newest_key).where(Job.id.in_(chunk))):
            tick = tick_of_key(key)
            if tick is not None:
                found[job_id] = tick
    return found


class ScheduleSync:
    """Owns the entries of one APScheduler scheduler; ``reconcile`` is called periodically from one thread."""

    def __init__(self, entries: Any, session_factory: sessionmaker[Session], *,
                 submit: Callable[[list[TickRequest]], None], take_failed_jobs: Callable[[], set[str]],
                 executor: str, grace_secs: float, full_sync_secs: float = FULL_SYNC_SECS) -> None:
        self._entries = entries  # apscheduler BaseScheduler; entries only, never our Job
        self._session_factory = session_factory
        self._submit = submit
        self._take_failed_jobs = take_failed_jobs
        self._executor = executor
        self._grace_secs = grace_secs
        self._full_sync_secs = full_sync_secs
        self._known: dict[str, ScheduleRow] = {}
        self._triggers: dict[str, CronTickTrigger] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._last_full = float("-inf")

    @property
    def scheduled_jobs(self) -> int:
        return len(self._triggers)

    def reconcile(self, now: datetime) -> SyncPlan:
        """Bring the entries in line with the jobs table as of ``now``; fire or skip missed ticks."""
        failed = self._take_failed_jobs()
        with self._session_factory() as session:
            fingerprint = load_fingerprint(session)
            due_full = time.monotonic() - self._last_full >= self._full_sync_secs
            if fingerprint == self._fingerprint and not due_full and not failed:
                return SyncPlan()
            desired = load_schedules(session)
            self._fingerprint, self._last_full = fingerprint, time.monotonic()
            plan = plan_sync(self._known, desired)
            for job_id in plan.remove:
                self._remove(job_id)
            check = [row for row in (*plan.add, *plan.replace) if self._put(row, now)]
            checked = {row.job_id for row in check}
            check += [desired[job_id] for job_id in sorted(failed - checked)
                      if job_id in desired and job_id in self._triggers]
            if check:
                self._catch_up(session, check, now)
            session.rollback()
        if plan:
            log.info("cron entries reconciled", extra={
                "added": len(plan.add), "replaced": len(plan.replace), "removed": len(plan.remove),
                "scheduled_jobs": len(self._triggers)})
        return plan

    def _put(self, row: ScheduleRow, now: datetime) -> bool:
        """Add or replace the entry of ``row``; ``False`` if its schedule cannot be built."""
        self._known[row.job_id] = row
        try:
            trigger = CronTickTrigger(row.cron, row.timezone)
        except ValueError as exc:  # written before validation existed, or by hand: skip, say so once
            self._drop_entry(row.job_id)
            log.error("job has an unusable schedule; not scheduled", extra={
                "job_id": row.job_id, "error": str(exc)})
            return False
        first = trigger.get_next_fire_time(None, now)
        if first is None:
            self._drop_entry(row.job_id)
            return False
        self._entries.add_job(_timing_only, trigger=trigger, id=row.job_id, name=row.job_id,
                              executor=self._executor, next_run_time=first, replace_existing=True,
                              coalesce=True, misfire_grace_time=max(int(self._grace_secs), 1), max_instances=1)
        self._triggers[row.job_id] = trigger
        return True

    def _remove(self, job_id: str) -> None:
        self._known.pop(job_id, None)
        self._drop_entry(job_id)

    def _drop_entry(self, job_id: str) -> None:
        if self._triggers.pop(job_id, None) is not None:
            with contextlib.suppress(LookupError):  # JobLookupError: already gone
                self._entries.remove_job(job_id)

    def _catch_up(self, session: Session, rows: Iterable[ScheduleRow], now: datetime) -> None:
        rows = list(rows)
        last_ticks = load_last_cron_ticks(session, [row.job_id for row in rows])
        due: list[TickRequest] = []
        for row in rows:
            trigger = self._triggers[row.job_id]
            floor = floor_of(row.created_at, row.schedule_changed_at, last_ticks.get(row.job_id))
            missed = find_missed_tick(trigger.spec, row.timezone, now=now, floor=floor, grace_secs=self._grace_secs)
            if missed is None:
                continue
            if missed.older:
                TICKS_SKIPPED.labels(reason="superseded").inc(missed.older)
                log.warning("missed cron ticks skipped: only the latest is considered", extra={
                    "job_id": row.job_id, "skipped": missed.older, "after": format_ts(floor),
                    "before": format_ts(missed.tick)})
            if missed.fire:
                due.append(TickRequest(row.job_id, missed.tick, row.cron, row.timezone, catch_up=True))
            else:
                TICKS_SKIPPED.labels(reason="beyond_grace").inc()
                log.warning("missed cron tick skipped: older than the misfire grace", extra={
                    "job_id": row.job_id, "tick": format_ts(missed.tick),
                    "late_secs": round((now - missed.tick).total_seconds(), 3), "grace_secs": self._grace_secs})
        self._submit(due)


def _timing_only() -> None:
    """The callable APScheduler requires; never called, the tick executor takes the entry instead."""
