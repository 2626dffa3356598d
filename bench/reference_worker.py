"""The bare reference for bench/dispatch.py: a plain dramatiq actor, no Sluice code.

Per message it does the minimum any durable HTTP-job worker does: ``UPDATE`` the run to executing
(commit), ``POST`` to the endpoint on a new connection (``Connection: close``: Sluice keeps its
connections alive, so this reference pays a TCP connect per call that Sluice does not), then ``INSERT`` one
event and ``UPDATE`` the run to completed (commit). psycopg2 with one connection per thread, ``http.client`` for the
call, the stock Redis broker with default middleware. Same process/thread layout and idle poll as the
Sluice worker so the comparison measures Sluice's own overhead.

``python bench/reference_worker.py --dsn ... --redis-url ... --processes 2 --threads 8``
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import signal
import sys
import threading
import time
from urllib.parse import urlsplit

QUEUE = "bench.reference"
ACTOR = "reference_run"

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_reference_runs (
    id text PRIMARY KEY, status text NOT NULL, attempt int NOT NULL DEFAULT 0, url text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), started_at timestamptz, finished_at timestamptz);
CREATE TABLE IF NOT EXISTS bench_reference_events (
    id bigserial PRIMARY KEY, run_id text NOT NULL, type text NOT NULL, data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
"""


def make_broker(redis_url: str):  # type: ignore[no-untyped-def]
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url)
    broker.declare_queue(QUEUE)
    return broker


def _declare(broker, dsn: str) -> None:  # type: ignore[no-untyped-def]
    import dramatiq
    import psycopg2

    local = threading.local()

    def connection():  # type: ignore[no-untyped-def]
        # A shared benchmark host may briefly run out of PostgreSQL connections: wait rather than lose work.
        for _ in range(600):
            if getattr(local, "conn", None) is not None:
                return local.conn
            try:
                local.conn = psycopg2.connect(dsn)
            except psycopg2.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("no PostgreSQL connection")

    def reference_run(run_id: str) -> None:
        for _ in range(100):  # a shared host may drop or refuse connections: retry rather than lose the run
            try:
                return run_once(run_id)
            except psycopg2.OperationalError:
                local.conn = None
                time.sleep(0.1)
        raise RuntimeError(f"gave up on {run_id}")

    def run_once(run_id: str) -> None:
        conn = connection()
        with conn.cursor() as cur:
            cur.execute("UPDATE bench_reference_runs SET status = 'executing', attempt = attempt + 1, "
                        "started_at = now() WHERE id = %s AND status = 'queued' RETURNING url, attempt", (run_id,))
            row = cur.fetchone()
        conn.commit()
        if row is None:
            return
        url, attempt = row
        parts = urlsplit(url)
        call = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            call.request("POST", parts.path, body=b"{}", headers={
                "Content-Type": "application/json", "Connection": "close",
                "X-Sluice-Run-Id": run_id, "X-Sluice-Attempt": str(attempt)})
            response = call.getresponse()
            status = response.status
            response.read()
        finally:
            call.close()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO bench_reference_events (run_id, type, data) VALUES (%s, 'attempt_finished', "
                        "json_build_object('http_status', %s))", (run_id, status))
            cur.execute("UPDATE bench_reference_runs SET status = 'completed', finished_at = now() WHERE id = %s",
                        (run_id,))
        conn.commit()

    dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, broker=broker, max_retries=0)(reference_run)


def _child(dsn: str, redis_url: str, threads: int, idle_poll_ms: int) -> None:
    import dramatiq

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker = make_broker(redis_url)
    _declare(broker, dsn)
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=threads, worker_timeout=idle_poll_ms)
    worker.start()
    while not stop.wait(0.5):
        pass
    worker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--idle-poll-ms", type=int, default=10)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_child, args=(args.dsn, args.redis_url, args.threads, args.idle_poll_ms))
                for _ in range(args.processes)]
    for child in children:
        child.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    for child in children:
        if child.is_alive() and child.pid is not None:
            child.terminate()
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
