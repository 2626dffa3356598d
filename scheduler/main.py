"""``sluice scheduler``: the maintenance loop (and, with the cron service, the schedules) until SIGTERM/SIGINT.

Builds Settings, engine, Redis and broker once, then runs each long-lived service in a thread that
watches one stop event. A signal sets the event; the process exits 0 once every thread has returned.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType

import redis

from scheduler.cron import CronService
from scheduler.maintenance import MaintenanceContext, MaintenanceLoop
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.logs import configure_logging
from shared.messages import make_broker
from shared.metrics import SCHEDULER_METRICS_PORT, expose_process_metrics

log = logging.getLogger("sluice.scheduler")


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env()
    configure_logging(settings, process="scheduler")
    engine = make_engine(settings.database_url, pool_size=4)
    client = redis.Redis.from_url(settings.redis_url)
    ctx = MaintenanceContext(settings=settings, session_factory=make_session_factory(engine),
                             broker=make_broker(settings), redis=client)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cron = CronService(settings, ctx.session_factory, ctx.broker)
    services = [threading.Thread(target=MaintenanceLoop(ctx).run, args=(stop,), name="maintenance"),
                threading.Thread(target=cron.serve, args=(stop,), name="cron")]
    for thread in services:
        thread.start()
    # /healthz fails once a service thread has died (the process then exits 1 within a second anyway).
    expose_process_metrics(SCHEDULER_METRICS_PORT, health=lambda: all(t.is_alive() for t in services))
    log.info("scheduler started", extra={"sweep_interval_secs": settings.sweep_interval_secs})
    while not stop.wait(1.0):
        if not all(t.is_alive() for t in services):
            log.error("a scheduler service thread died; exiting")
            stop.set()
            return 1
    for thread in services:
        thread.join(timeout=30)
    engine.dispose()
    return 0
