"""The cron half of the scheduler process: APScheduler for timing, our code for everything else.

Three parts, wired here:

- an APScheduler 3 background scheduler (``TimerScheduler``) whose in-memory *entries* (one per scheduled job) carry a
  ``CronTickTrigger``; its only executor, ``TickExecutor``, hands each due tick to the firing queue;
- ``TickFiring`` (``scheduler.fire``): one thread that turns ticks into runs, batched per instant;
- ``ScheduleSync`` (``scheduler.sync``): reconciles entries with the jobs table and fires or skips missed
  ticks, called every ``SLUICE_SCHEDULER_SYNC_SECS`` from the process's loop.

Replicas: APScheduler 3 cannot share a job store between processes, so each replica keeps its own
in-memory entries and fires every tick itself; the unique index on (job, tick key) turns a second
replica's insert into a no-op. One active replica is recommended; a second is harmless (deploy/scheduler.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from scheduler.fire import TickFiring, TickRequest
from scheduler.sync import ScheduleSync
from scheduler.trigger import CronTickTrigger
from shared.clock import utcnow
from shared.config import Settings

log = logging.getLogger("sluice.scheduler")

EXECUTOR = "cron-ticks"


class TickExecutor(BaseExecutor):
    """An APScheduler executor that runs nothing: it collects each due entry's latest tick, and ``flush``
    hands everything collected in one timer pass to ``on_ticks`` as one batch.

    APScheduler coalesces a backlog into the latest tick (``coalesce=True``); whether a late tick still
    fires is decided by ``scheduler.fire`` with the §6.4 grace, not by APScheduler's misfire check.
    """

    def __init__(self, on_ticks: Callable[[list[TickRequest]], None]) -> None:
        super().__init__()
        self._on_ticks = on_ticks
        self._collected: list[TickRequest] = []
        self._collected_lock = threading.Lock()

    def submit_job(self, job: Any, run_times: list[datetime]) -> None:  # `job` is an APScheduler entry
        trigger = job.trigger
        if not isinstance(trigger, CronTickTrigger) or not run_times:
            return
        request = TickRequest(job.id, run_times[-1].astimezone(UTC), trigger.cron, trigger.timezone)
        with self._collected_lock:
            self._collected.append(request)

    def flush(self) -> None:
        with self._collected_lock:
            collected, self._collected = self._collected, []
        if collected:
            self._on_ticks(collected)

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        raise NotImplementedError("submit_job is overridden")


class TimerScheduler(BackgroundScheduler):
    """APScheduler's background scheduler, flushing the tick executors after each pass over due entries,
    so that entries due on the same instant reach the firing thread as one batch (one transaction)."""

    def _process_jobs(self) -> float | None:
        try:
            return super()._process_jobs()  # type: ignore[no-any-return]
        finally:
            for executor in list(self._executors.values()):
                if isinstance(executor, TickExecutor):
                    executor.flush()


class CronService:
    """Start, reconcile periodically, stop. ``clock`` is the process's one source of ``now``."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], broker: Any, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self._clock = clock
        self.firing = TickFiring(session_factory, broker, grace_secs=settings.cron_misfire_grace_secs, clock=clock)
        self.entries = TimerScheduler(timezone=UTC, executors={EXECUTOR: TickExecutor(self.firing.submit)})
        self.sync = ScheduleSync(self.entries, session_factory, submit=self.firing.submit,
                                 take_failed_jobs=self.firing.take_failed_jobs, executor=EXECUTOR,
                                 grace_secs=settings.cron_misfire_grace_secs)
        self._stop = threading.Event()

    def start(self) -> None:
        """Fire missed ticks, load the entries, then start the timer (entries added before it start in bulk)."""
        self.firing.start()
        self.reconcile()
        self.entries.start()
        log.info("cron scheduler started", extra={
            "scheduled_jobs": self.sync.scheduled_jobs, "sync_secs": self.settings.scheduler_sync_secs,
            "misfire_grace_secs": self.settings.cron_misfire_grace_secs})

    def reconcile(self) -> None:
        """One reconciliation; a database error is logged and retried at the next interval."""
        try:
            self.sync.reconcile(self._clock())
        except Exception:
            log.exception("cron reconciliation failed; retrying at the next interval")

    def run(self, stop: threading.Event | None = None) -> None:
        """Reconcile every ``scheduler_sync_secs`` until ``stop`` (or ``self.stop()``) is set."""
        stop = stop or self._stop
        while not stop.wait(self.settings.scheduler_sync_secs) and not self._stop.is_set():
            self.reconcile()

    def serve(self, stop: threading.Event) -> None:
        """Start, reconcile until ``stop`` is set, then stop: the body of the scheduler's cron thread."""
        self.start()
        try:
            self.run(stop)
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self.entries.running:
            self.entries.shutdown(wait=False)
        self.firing.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m scheduler.cron``: the cron part alone, without the maintenance loops (benchmarks,
    debugging). Production runs ``sluice scheduler``, which includes it."""
    import signal

    from shared.db.engine import make_engine, make_session_factory
    from shared.logs import configure_logging
    from shared.messages.broker import make_broker
    from shared.stop_signals import POLL_SECS, StopSignals

    settings = Settings.from_env()
    configure_logging(settings, process="scheduler")
    service = CronService(settings, make_session_factory(make_engine(settings.database_url)), make_broker(settings))
    stop, signals = threading.Event(), StopSignals((signal.SIGTERM, signal.SIGINT))
    serving = threading.Thread(target=service.serve, args=(stop,), name="cron")
    serving.start()
    while not signals.wait(POLL_SECS) and serving.is_alive():
        pass
    stop.set()
    serving.join()
    return 0 if signals.received else 1  # else the service thread died (its traceback is on stderr)


if __name__ == "__main__":
    raise SystemExit(main())
