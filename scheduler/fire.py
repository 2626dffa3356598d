"""Turning ticks into runs: one transaction per tick instant, however many jobs share it (§6.3, §6.6).

Ticks arrive on a queue in batches (all entries the timer found due in one pass; the catch-ups of one
reconciliation, see ``scheduler.cron``) and are fired by one thread. It groups them by tick instant and,
per instant, re-reads the jobs,
creates their runs with one bulk insert (``shared.triggers.cron``), commits, and enqueues every queued run in
one Redis round trip. That keeps 1,000 jobs due on the same minute within a fraction of a second.

A tick is fired only if the job still wants it: enabled, the same ``cron`` and ``timezone`` the tick was
computed from, and the tick after the job's creation and last schedule change (§6.5: a change affects the
first tick after its commit). A timer tick that arrives later than the grace (the process was stalled) is
a missed tick (§6.4) and is skipped instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from scheduler.metrics import SCHEDULE_LAG, TICKS_SKIPPED
from scheduler.missed import is_within_grace
from shared.clock import format_ts
from shared.db.models import Job, Run
from shared.metrics import observe_runs_created
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.schedules.cron import tick_key
from shared.triggers.cron import create_cron_runs

log = logging.getLogger("sluice.scheduler")

# A timer tick is on time while it is younger than the grace, and never counts as late below this
# (so SLUICE_CRON_MISFIRE_GRACE_SECS=0 disables catch-up, not cron).
MIN_ON_TIME_SECS = 5.0


@dataclass(frozen=True)
class TickRequest:
    """One (job, tick) to fire. ``cron``/``timezone`` are what the tick was computed from; ``catch_up``
    marks a missed tick already judged within the grace (§6.4)."""

    job_id: str
    tick: datetime
    cron: str
    timezone: str
    catch_up: bool = False


def is_tick_wanted(job: Job | None, request: TickRequest) -> bool:
    """Whether ``job`` (as just re-read) still wants the run of ``request.tick``."""
    if job is None or not job.enabled or job.cron is None:
        return False
    if job.cron != request.cron or job.timezone != request.timezone:
        return False
    return request.tick > max(job.created_at, job.schedule_changed_at or job.created_at)


@dataclass
class FireResult:
    created: list[dict[str, Any]]
    unwanted: int
    skipped_late: int


def _existing_ticks(session: Session, requests: Sequence[TickRequest]) -> set[str]:
    keys = [tick_key(r.job_id, r.tick) for r in requests]
    if not keys:
        return set()
    query = sa.select(Run.idempotency_key).where(
        Run.triggered_by == "cron", Run.job_id.in_({r.job_id for r in requests}), Run.idempotency_key.in_(keys))
    return {key for key in session.scalars(query) if key is not None}


def fire_tick(session_factory: sessionmaker[Session], broker: Any, tick: datetime,
              requests: Sequence[TickRequest], *, clock: Callable[[], datetime], grace_secs: float) -> FireResult:
    """Fire every request of one tick instant; log one line per job and update the metrics."""
    now = clock()
    on_time = max(float(grace_secs), MIN_ON_TIME_SECS)
    late = [r for r in requests if not r.catch_up and not is_within_grace(tick, now, on_time)]
    timely = [r for r in requests if r.catch_up or is_within_grace(tick, now, on_time)]
    effects = Effects()
    session = session_factory()
    try:
        skipped = _skip_late(session, late, now) if late else 0
        by_id = {job.id: job for job in session.scalars(
            sa.select(Job).where(Job.id.in_([r.job_id for r in timely])))} if timely else {}
        wanted = [by_id[r.job_id] for r in timely if is_tick_wanted(by_id.get(r.job_id), r)]
        created = create_cron_runs(session, wanted, tick, now, effects)
        commit_and_apply(session, effects, broker)
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    enqueued_at = clock()
    observe_runs_created("cron", len(created))
    lag_secs = (enqueued_at - tick).total_seconds()
    catch_up = {r.job_id for r in requests if r.catch_up}
    for row in created:
        SCHEDULE_LAG.observe(lag_secs)
        log.info("cron run created", extra={
            "job_id": row["job_id"], "run_id": row["id"], "tick": format_ts(tick), "status": row["status"],
            "lag_secs": round(lag_secs, 3), "catch_up": row["job_id"] in catch_up})
    result = FireResult(created=created, unwanted=len(timely) - len(created), skipped_late=skipped)
    log.info("cron tick fired", extra={
        "tick": format_ts(tick), "jobs": len(requests), "runs_created": len(created), "not_created": result.unwanted,
        "skipped_late": skipped, "lag_secs": round(lag_secs, 3),
        "duration_secs": round((enqueued_at - now).total_seconds(), 3)})
    return result


def _skip_late(session: Session, late: Sequence[TickRequest], now: datetime) -> int:
    """Log and count timer ticks that came too late; a tick another replica already ran is not missed."""
    existing = _existing_ticks(session, late)
    skipped = 0
    for request in late:
        if tick_key(request.job_id, request.tick) in existing:
            continue
        skipped += 1
        TICKS_SKIPPED.labels(reason="beyond_grace").inc()
        log.warning("cron tick skipped: processed too late", extra={
            "job_id": request.job_id, "tick": format_ts(request.tick),
            "late_secs": round((now - request.tick).total_seconds(), 3)})
    return skipped


def group_by_tick(requests: Iterable[TickRequest]) -> list[tuple[datetime, list[TickRequest]]]:
    """Requests grouped by tick instant, oldest first; one request per job and tick."""
    groups: dict[datetime, dict[str, TickRequest]] = defaultdict(dict)
    for request in requests:
        groups[request.tick].setdefault(request.job_id, request)
    return [(tick, list(groups[tick].values())) for tick in sorted(groups)]


class TickFiring:
    """The firing thread: ``submit`` batches from any thread; they are fired per tick instant.

    The timer hands over all entries due in one pass as one batch, so jobs due on the same instant arrive
    together; whatever else is already queued is merged in before grouping. A tick whose firing failed
    (database or Redis down) is remembered in ``failed_jobs``; the next reconciliation runs the missed-tick
    check for those jobs, so the tick is retried within the grace.
    """

    def __init__(self, session_factory: sessionmaker[Session], broker: Any, *, grace_secs: float,
                 clock: Callable[[], datetime]) -> None:
        self._session_factory = session_factory
        self._broker = broker
        self._grace_secs = grace_secs
        self._clock = clock
        self._queue: queue.Queue[list[TickRequest] | None] = queue.Queue()
        self._failed: set[str] = set()
        self._failed_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sluice-cron-fire", daemon=True)
        self._pending = 0
        self._pending_changed = threading.Condition()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_secs: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_secs)

    def submit(self, requests: Sequence[TickRequest]) -> None:
        if not requests:
            return
        with self._pending_changed:
            self._pending += len(requests)
        self._queue.put(list(requests))

    def wait_idle(self, timeout_secs: float) -> bool:
        """Block until every submitted tick has been fired (tests and benchmarks)."""
        with self._pending_changed:
            return self._pending_changed.wait_for(lambda: self._pending == 0, timeout_secs)

    def take_failed_jobs(self) -> set[str]:
        with self._failed_lock:
            failed, self._failed = self._failed, set()
        return failed

    def _drain(self, batch: list[TickRequest]) -> bool:
        """Merge batches already queued into ``batch``; ``True`` if a stop was queued among them."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.extend(item)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            stopping = self._drain(batch)
            for tick, requests in group_by_tick(batch):
                self._fire(tick, requests)
            with self._pending_changed:
                self._pending -= len(batch)
                self._pending_changed.notify_all()
            if stopping:
                return

    def _fire(self, tick: datetime, requests: list[TickRequest]) -> None:
        """All the jobs of a tick in one transaction; if that fails, each job in its own, so that one job
        (one project's odd row, one failing gate) never costs the others their run."""
        try:
            fire_tick(self._session_factory, self._broker, tick, requests, clock=self._clock,
                      grace_secs=self._grace_secs)
            return
        except Exception:
            if len(requests) == 1:
                self._failed_to_fire(tick, requests)
                return
            log.warning("cron tick failed as a whole; firing its jobs one by one", exc_info=True, extra={
                "tick": format_ts(tick), "jobs": len(requests)})
        for request in requests:
            try:
                fire_tick(self._session_factory, self._broker, tick, [request], clock=self._clock,
                          grace_secs=self._grace_secs)
            except Exception:
                self._failed_to_fire(tick, [request])

    def _failed_to_fire(self, tick: datetime, requests: list[TickRequest]) -> None:
        log.exception("cron firing failed; the next reconciliation retries within the grace", extra={
            "tick": format_ts(tick), "jobs": len(requests), "job_id": requests[0].job_id})
        with self._failed_lock:
            self._failed.update(r.job_id for r in requests)
