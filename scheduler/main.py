"""``sluice scheduler``: the maintenance loop (and, with the cron service, the schedules) until SIGTERM/SIGINT.

Builds Settings, engine, Redis and broker once, then runs each long-lived service in a thread that
watches one stop event. The main thread notices a signal and sets the event; the process exits 0 once every
thread has returned, or 1 after ``SHUTDOWN_SECS`` if one has not (its stack goes to stderr): a scheduler
whose parent died (a killed ``sluice dev``) gets one SIGTERM and nothing after it, so its exit must not wait
on a stuck call.
Stopping anywhere is safe: every write is one transaction, and a tick fired twice makes one run.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.logs import configure_logging
from shared.messages.broker import make_broker
from shared.metrics import SCHEDULER_METRICS_PORT, expose_process_metrics
from shared.redis_client import make_redis
from shared.stop_signals import POLL_SECS, StopSignals

log = logging.getLogger("sluice.scheduler")

SHUTDOWN_SECS = 20.0


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="sluice scheduler",
        description="Run the cron schedules and the maintenance loops (delayed runs, expiry, lost-worker "
                    "reaping, re-enqueueing, webhook retries) until SIGTERM or Ctrl-C. Run one per deployment; "
                    "a second one is harmless. Configured by environment variables (DATABASE_URL, REDIS_URL, "
                    "SLUICE_*), not options.")


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(list(argv or []))
    # Imported once the arguments are read: with PROMETHEUS_MULTIPROC_DIR set, the scheduler's metrics write
    # their file when their module loads, and ``sluice scheduler --help`` must leave nothing behind.
    from scheduler.cron import CronService
    from scheduler.maintenance import MaintenanceContext, MaintenanceLoop

    settings = Settings.from_env()
    configure_logging(settings, process="scheduler")
    engine = make_engine(settings.database_url, pool_size=4)
    client = make_redis(settings.redis_url)
    ctx = MaintenanceContext(settings=settings, session_factory=make_session_factory(engine),
                             broker=make_broker(settings), redis=client)
    stop = threading.Event()
    signals = StopSignals((signal.SIGTERM, signal.SIGINT))
    cron = CronService(settings, ctx.session_factory, ctx.broker)
    services = [threading.Thread(target=MaintenanceLoop(ctx).run, args=(stop,), name="maintenance"),
                threading.Thread(target=cron.serve, args=(stop,), name="cron")]
    for thread in services:
        thread.start()
    # /healthz fails once a service thread has died (the process then exits 1 within a second anyway).
    expose_process_metrics(SCHEDULER_METRICS_PORT, health=lambda: all(t.is_alive() for t in services))
    log.info("scheduler started", extra={"sweep_interval_secs": settings.sweep_interval_secs})
    code = 0
    while not signals.wait(POLL_SECS):
        if not all(t.is_alive() for t in services):
            log.error("a scheduler service thread died; exiting")
            code = 1
            break
    if signals.first:
        log.info("stopping", extra={"signal": signals.first})
    stop.set()
    _exit_after(SHUTDOWN_SECS)
    for thread in services:
        thread.join()
    engine.dispose()
    return code


def _exit_after(secs: float) -> None:
    """Exit the process with 1 if it is still running ``secs`` from now (a thread stuck in a call)."""
    def force() -> None:
        # Straight to the file descriptor, as the stacks are: the stuck thread may hold logging's lock.
        os.write(2, f"scheduler did not stop in time; exiting (after {secs:g} s)\n".encode())
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

    timer = threading.Timer(secs, force)
    timer.daemon = True
    timer.start()
