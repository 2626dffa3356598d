"""``sluice worker``: N processes × T threads consuming ``sluice.runs`` (and ``sluice.webhooks``).

A small supervisor spawns the worker processes (``--processes``, default 2) and restarts one that dies;
each process builds its own engine, Redis clients and broker, declares the actors and runs a
``dramatiq.Worker`` with ``--threads`` threads (default ``SLUICE_WORKER_THREADS``). Nothing is built at
import time, and the dramatiq CLI is not involved, so this module controls the consumer's idle poll.

Idle: a consumer whose queue is empty blocks in Redis (``BLPOP`` on the queue's wake list, which every
enqueue pushes to; ``shared.messages.consumer.BatchedAckConsumer``) and fetches as soon as a message arrives. Without
a wake-up it looks at its queue every ``--idle-poll-ms`` (default 5000): the safety net for messages
enqueued without a token, and the consumer's broker heartbeat. An idle process thus makes well under one
Redis call per second per queue, and dramatiq's worker threads wait on an in-memory queue.

Shutdown: SIGTERM/SIGINT → stop fetching, requeue prefetched messages, let in-flight attempts finish
(heartbeats continue meanwhile), exit 0. Further SIGTERMs are ignored (a process manager signals the whole
process group, so each child also gets the supervisor's forwarded copy); a SIGINT or SIGQUIT while stopping
exits at once. SIGKILL recovery is the reaper's job (``scheduler.reaper``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import dramatiq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.clock import utcnow
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.limits.limiter import Limits
from shared.logs import configure_logging
from shared.messages.broker import DEFAULT_IDLE_POLL_MS, MAX_IDLE_POLL_MS, make_broker
from shared.messages.layout import DISPATCH_QUEUE, WEBHOOK_QUEUE
from shared.metrics import WORKER_METRICS_PORT, expose_process_metrics
from shared.metrics_listener import Heartbeat
from shared.redis_client import make_redis
from shared.stop_signals import POLL_SECS, StopSignals
from worker.actors import declare_dispatch_actor
from worker.heartbeat import AttemptMonitor
from worker.http import HttpClient
from worker.runner import Runner
from worker.webhook_actor import register_webhook_actor

log = logging.getLogger("sluice.worker")

DEFAULT_PROCESSES = 2
# How often an idle worker thread checks whether to stop (dramatiq's ``worker_timeout``): memory only.
WORKER_THREAD_TIMEOUT_MS = 1000
# In-flight attempts may run up to 86 400 s; a graceful stop waits for them (the platform's kill timeout
# decides otherwise, and the reaper recovers what a kill interrupts).
GRACEFUL_STOP_MS = (86_400 + 600) * 1000
RESTART_DELAY_SECS = 1.0
SUPERVISOR_STALL_SECS = 30.0  # /healthz fails when the supervisor's loop has not turned for this long


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice worker", description="Run Sluice worker processes.")
    parser.add_argument("--processes", type=int, default=DEFAULT_PROCESSES,
                        help=f"worker processes (default {DEFAULT_PROCESSES}; 1 = run in this process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per process (default SLUICE_WORKER_THREADS)")
    parser.add_argument("--idle-poll-ms", type=int, default=DEFAULT_IDLE_POLL_MS,
                        help="how often an idle worker looks at its queues without a wake-up, in ms "
                             f"(default {DEFAULT_IDLE_POLL_MS}, at most {MAX_IDLE_POLL_MS})")
    parser.add_argument("--queues", default=f"{DISPATCH_QUEUE},{WEBHOOK_QUEUE}",
                        help="comma-separated queues to consume (default: runs and webhooks)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv or []))
    settings = Settings.from_env()
    if args.threads is None:
        args.threads = settings.worker_threads
    settings.secret_box  # noqa: B018 -- refuse to start without a key, before any child is spawned
    if args.processes < 1 or args.threads < 1 or args.idle_poll_ms < 1:
        raise SystemExit("sluice worker: --processes, --threads and --idle-poll-ms must be >= 1")
    if args.idle_poll_ms > MAX_IDLE_POLL_MS:  # each look is also the consumer's broker heartbeat
        raise SystemExit(f"sluice worker: --idle-poll-ms must be <= {MAX_IDLE_POLL_MS}")
    configure_logging(settings, process="worker")
    # /healthz: the supervisor's loop turns every half second (a single process answers while it lives).
    heartbeat = Heartbeat(SUPERVISOR_STALL_SECS) if args.processes > 1 else None
    expose_process_metrics(WORKER_METRICS_PORT, merge_children=args.processes > 1,  # before any child starts
                           health=heartbeat.fresh if heartbeat is not None else None)
    queues = frozenset(q.strip() for q in args.queues.split(",") if q.strip())
    if heartbeat is None:
        return run_worker_process(settings, threads=args.threads, idle_poll_ms=args.idle_poll_ms, queues=queues)
    return _supervise(args.processes, args.threads, args.idle_poll_ms, queues, heartbeat)


def _child(threads: int, idle_poll_ms: int, queues: frozenset[str]) -> None:
    # A terminal's Ctrl-C reaches the whole process group; the supervisor forwards it as SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings.from_env()
    configure_logging(settings, process="worker")
    raise SystemExit(run_worker_process(settings, threads=threads, idle_poll_ms=idle_poll_ms, queues=queues,
                                        signals=(signal.SIGTERM,)))


def _supervise(processes: int, threads: int, idle_poll_ms: int, queues: frozenset[str],
               heartbeat: Heartbeat) -> int:
    """Spawn ``processes`` children, restart any that dies, forward SIGTERM/SIGINT and wait for them."""
    context = multiprocessing.get_context("spawn")  # children start clean: no inherited sockets or threads

    def spawn() -> multiprocessing.process.BaseProcess:
        child = context.Process(target=_child, args=(threads, idle_poll_ms, queues), name="sluice-worker")
        child.start()
        return child

    def signal_children(signum: int) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    children = [spawn() for _ in range(processes)]
    # SIGINT or SIGQUIT while stopping kills the children: someone is done waiting for their attempts.
    signals = StopSignals((signal.SIGTERM, signal.SIGINT, signal.SIGQUIT),
                          on_force=lambda: signal_children(signal.SIGKILL))
    log.info("worker supervisor started", extra={"processes": processes, "threads": threads,
                                                 "pids": [c.pid for c in children]})
    while not signals.received:
        heartbeat.beat()
        for index, child in enumerate(children):
            if not child.is_alive() and not signals.received:
                log.error("worker process died; restarting", extra={"pid": child.pid, "exitcode": child.exitcode})
                time.sleep(RESTART_DELAY_SECS)
                children[index] = spawn()
        signals.wait(0.5)
    signal_children(signal.SIGTERM)
    for child in children:
        child.join()
    return 0


def steer_claim_plans(engine: Engine) -> None:
    """Keep the start statement on its index under stale statistics.

    The ready set changes size abruptly (a bulk trigger queues thousands of runs between two ANALYZEs).
    With statistics that still say "a few queued runs", PostgreSQL may answer the claim with a bitmap scan
    of every queued run plus a sort — O(queued) per start, O(n²) per drain (measured: 80 ms per start at
    2 000 queued). Without bitmap scans the only cheap plan left is the ordered ``ix_runs_ready`` scan that
    stops at the first unlocked row. The worker's other statements are primary-key or small index lookups
    that never need bitmap scans.
    """
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET enable_bitmapscan = off")
        dbapi_connection.commit()

    sa.event.listen(engine, "connect", on_connect)


def worker_stop_signals(signals: Sequence[int]) -> StopSignals:
    """Each of ``signals`` (and SIGQUIT) asks for a graceful stop. Once stopping, SIGTERM changes nothing (the
    same request again, from the process group and the supervisor); SIGINT or SIGQUIT exits at once (someone
    pressing Ctrl-C twice) and leaves in-flight attempts to the reaper."""
    return StopSignals((*signals, signal.SIGQUIT), on_force=lambda: os._exit(1))


# A worker thread is I/O-bound: each attempt is a dozen short round trips (PostgreSQL, Redis, HTTP), and after
# each one it waits for the GIL. With CPython's default 5 ms switch interval a thread busy in Python (another
# attempt's claim or record) can hold it up to 5 ms per wait; at 1 ms the slot hand-off path (worker.handoff)
# stays within a few ms on a loaded machine. The cost is more frequent GIL hand-overs between busy threads.
GIL_SWITCH_SECS = 0.001


def run_worker_process(settings: Settings, *, threads: int, idle_poll_ms: int = DEFAULT_IDLE_POLL_MS,
                       queues: frozenset[str] = frozenset({DISPATCH_QUEUE, WEBHOOK_QUEUE}),
                       stop: threading.Event | None = None,
                       signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """One worker process: build dependencies, declare actors, consume until SIGTERM/SIGINT (or ``stop``)."""
    settings.secret_box  # noqa: B018 -- no key, no worker: it could not sign (ConfigError at start)
    stop = stop or threading.Event()
    received = None  # a thread of another process (a test) is stopped by ``stop`` alone
    if threading.current_thread() is threading.main_thread():
        received = worker_stop_signals(signals)
        sys.setswitchinterval(GIL_SWITCH_SECS)

    # Pre-ping: a pooled connection that died (PostgreSQL restarted) is replaced at checkout. An attempt's
    # own statements go over its thread's held connection (worker.connection, which re-sends on a closed
    # one) and check nothing out; sessions serve the heartbeat, terminal hooks and snapshot reads.
    engine = make_engine(settings.database_url, pool_size=threads + 2)
    steer_claim_plans(engine)
    session_factory = make_session_factory(engine)
    redis_client = make_redis(settings.redis_url)
    limits = Limits(redis_client, per_thread_connections=True)  # its threads live as long as the process
    # Batched acks, consumers blocking on wake-ups, no delay-queue consumers (shared.messages.broker.SluiceBroker).
    broker = make_broker(settings, idle_poll_ms=idle_poll_ms)
    http = HttpClient.configured(settings, os.environ, pool_size=threads)  # endpoint calls and webhooks
    monitor = AttemptMonitor(session_factory, redis_client, limits, clock=utcnow,
                             heartbeat_interval_secs=settings.heartbeat_interval_secs).start()
    runner = Runner(session_factory=session_factory, limits=limits, broker=broker, settings=settings,
                    monitor=monitor, stopping=stop.is_set, post_function=http.post)
    consumed = {DISPATCH_QUEUE} & queues
    if consumed:
        declare_dispatch_actor(broker, runner)
    if WEBHOOK_QUEUE in queues:
        register_webhook_actor(broker, session_factory=session_factory, settings=settings, post_function=http.post)
        consumed.add(WEBHOOK_QUEUE)
    worker = dramatiq.Worker(broker, queues=consumed, worker_threads=threads, worker_timeout=WORKER_THREAD_TIMEOUT_MS)
    worker.start()
    log.info("worker process started", extra={"pid": os.getpid(), "threads": threads, "queues": sorted(consumed)})
    try:
        while not stop.is_set():
            if received is None:
                stop.wait(1.0)
            elif received.wait(POLL_SECS):
                stop.set()
    finally:
        log.info("worker process stopping: finishing in-flight attempts", extra={
            "pid": os.getpid(), "in_flight": monitor.in_flight()})
        worker.stop(timeout=GRACEFUL_STOP_MS)
        monitor.stop()
        http.close()
        broker.close()
        redis_client.close()
        engine.dispose()
        log.info("worker process stopped", extra={"pid": os.getpid()})
    return 0
