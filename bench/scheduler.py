"""Benchmark the cron scheduler: lag at a busy minute, CPU at rest. Prints a table.

1. **Busy minute**: N jobs (default 1,000) on ``* * * * *``, one scheduler process, a worker
   (``sluice worker``) and a local HTTP sink. For the first tick at least 5 s after the scheduler started:
   lag from the tick to each run being committed and enqueued (the scheduler's ``lag_secs`` log field) and
   to the sink receiving the endpoint call.
2. **At rest**: M jobs (default 10,000) scheduled but not due during the window (``0 0 1 1 *``); the
   scheduler's CPU (utime + stime from ``/proc/<pid>/stat``) over ``--rest-secs`` (default 60), its start-up
   time and resident memory; once for the cron part alone (``python -m scheduler.cron``) and once for the
   whole ``sluice scheduler`` (cron + maintenance loops).

Needs PostgreSQL and Redis. The database ``--db-name`` (default ``sluice_bench_sched``) is dropped and
recreated; the Redis DB ``--redis-db`` (default 9) is flushed.

    .venv/bin/python bench/scheduler.py [--jobs 1000] [--rest-jobs 10000] [--rest-secs 60] [--no-worker]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import BENCH_SECRET_KEY, prepare_database  # noqa: E402
from shared.db.engine import make_engine  # noqa: E402
from shared.db.models import Job, JobVersion, Run  # noqa: E402
from shared.ids import new_version_id, uuid7  # noqa: E402
from tests.factories import JOB_DEFAULTS  # noqa: E402

PG_ADMIN_URL = os.environ.get("SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

FULL_SCHEDULER = [str(ROOT / ".venv" / "bin" / "sluice"), "scheduler"]  # cron + maintenance loops
CRON_ONLY = [sys.executable, "-m", "scheduler.cron"]  # the cron part alone




class Sink(ThreadingHTTPServer):
    """Records when each job's endpoint (``/<job id>``) is first called."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.received: dict[str, float] = {}
        self.lock = threading.Lock()


class SinkHandler(BaseHTTPRequestHandler):
    server: Sink

    def do_POST(self) -> None:
        at = time.time()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.received.setdefault(self.path.strip("/"), at)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def insert_jobs(engine: sa.Engine, count: int, cron: str, endpoint: str, now: datetime) -> list[str]:
    """``count`` jobs (with their version-1 snapshot) in bulk; the endpoint gets ``/<job id>`` appended."""
    jobs, versions = [], []
    for i in range(count):
        job_id, version_id, slug = uuid7(), new_version_id(), f"bench-{i}"
        config = {**JOB_DEFAULTS, "name": slug, "slug": slug, "cron": cron,
                  "endpoint_url": f"{endpoint}/{job_id}", "max_attempts": 1}
        jobs.append({**config, "id": job_id, "project_id": "bench", "version": 1, "version_id": version_id,
                     "created_by": "bench", "updated_by": "bench", "created_at": now, "updated_at": now,
                     "schedule_changed_at": now})
        versions.append({"id": version_id, "job_id": job_id, "version": 1, "config": config,
                         "created_by": "bench", "created_at": now})
    with engine.begin() as conn:
        for start in range(0, count, 1000):
            conn.execute(sa.insert(Job), jobs[start:start + 1000])
            conn.execute(sa.insert(JobVersion), versions[start:start + 1000])
    return [job["id"] for job in jobs]


def start(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (the worker supervisor has children)."""
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"),
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started, SIGKILL it if it has not exited within 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def wait_for_event(path: Path, event: str, timeout_secs: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        for line in log_lines(path):
            if line.get("event") == event:
                return line
        time.sleep(0.1)
    raise SystemExit(f"scheduler did not log {event!r} within {timeout_secs} s; see {path}")


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE / 2**20


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return statistics.median(ordered), p99, ordered[-1]


def busy_minute(args: argparse.Namespace, url: str, env: dict[str, str], workdir: Path) -> list[tuple[str, str]]:
    engine = make_engine(url)
    sink = Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    job_ids = insert_jobs(engine, args.jobs, "* * * * *", endpoint, datetime.now(UTC))
    worker = None
    if not args.no_worker:
        worker = start([str(ROOT / ".venv" / "bin" / "sluice"), "worker", "--processes", str(args.worker_processes)],
                       env, workdir / "worker.log")
    sched_log = workdir / "scheduler-busy.log"
    scheduler = start(FULL_SCHEDULER, env, sched_log)
    try:
        wait_for_event(sched_log, "cron scheduler started", 60)
        started = datetime.now(UTC)
        tick = (started + timedelta(seconds=5)).replace(second=0, microsecond=0) + timedelta(minutes=1)
        print(f"busy minute: {args.jobs} jobs, measuring tick {tick:%H:%M:%S}Z ...", flush=True)
        deadline = tick.timestamp() + 60
        stamp = tick.strftime("%Y-%m-%dT%H:%M:%S")
        while time.time() < deadline:
            created = [line for line in log_lines(sched_log)
                       if line.get("event") == "cron run created" and str(line.get("tick", "")).startswith(stamp)]
            with sink.lock:
                called = sum(1 for job_id in job_ids if job_id in sink.received)
            if len(created) >= args.jobs and (worker is None or called >= args.jobs):
                break
            time.sleep(0.25)
        with engine.connect() as conn:
            runs = conn.execute(sa.select(sa.func.count()).select_from(Run).where(Run.scheduled_at == tick)).scalar()
    finally:
        stop(scheduler)
        if worker is not None:
            stop(worker)
        sink.shutdown()
    enqueue_lags = [float(line["lag_secs"]) for line in created]
    rows = [("runs created for the tick", f"{runs} / {args.jobs}")]
    if enqueue_lags:
        p50, p99, worst = quantiles(enqueue_lags)
        rows.append(("tick → run enqueued  p50 / p99 / max", f"{p50:.3f} / {p99:.3f} / {worst:.3f} s"))
    if worker is None:
        rows.append(("tick → endpoint called", "not measured (--no-worker)"))
    else:
        with sink.lock:
            call_lags = [sink.received[j] - tick.timestamp() for j in job_ids if j in sink.received]
        if call_lags:
            p50, p99, worst = quantiles(call_lags)
            rows.append((f"tick → endpoint called  p50 / p99 / max ({len(call_lags)} calls, "
                         f"{args.worker_processes} worker procs)", f"{p50:.3f} / {p99:.3f} / {worst:.3f} s"))
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE run_events, runs, job_versions, jobs CASCADE"))
    engine.dispose()
    return rows


def insert_rest_jobs(args: argparse.Namespace, url: str) -> None:
    engine = make_engine(url)
    insert_jobs(engine, args.rest_jobs, "0 0 1 1 *", "http://127.0.0.1:9", datetime.now(UTC))
    engine.dispose()


def at_rest(args: argparse.Namespace, env: dict[str, str], workdir: Path, label: str,
            cmd: list[str]) -> list[tuple[str, str]]:
    sched_log = workdir / f"scheduler-rest-{label}.log"
    began = time.monotonic()
    scheduler = start(cmd, env, sched_log)
    try:
        started = wait_for_event(sched_log, "cron scheduler started", 120)
        startup_secs = time.monotonic() - began
        time.sleep(2)
        print(f"at rest ({label}): {started.get('scheduled_jobs')} scheduled jobs, measuring {args.rest_secs} s ...",
              flush=True)
        before, t0 = cpu_secs(scheduler.pid), time.monotonic()
        time.sleep(args.rest_secs)
        used, elapsed = cpu_secs(scheduler.pid) - before, time.monotonic() - t0
        rss = rss_mib(scheduler.pid)
    finally:
        stop(scheduler)
    return [
        (f"{label}: start-up with {args.rest_jobs} jobs (process start → entries loaded)", f"{startup_secs:.2f} s"),
        (f"{label}: CPU at rest with {args.rest_jobs} jobs (utime+stime)",
         f"{used:.2f} s per {elapsed:.0f} s = {100 * used / elapsed:.2f} % of one core"),
        (f"{label}: resident memory at rest", f"{rss:.0f} MiB"),
    ]


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"{'measure'.ljust(width)} | result")
    print(f"{'-' * width}-|-{'-' * 40}")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}", flush=True)


def main() -> None:
    os.environ.setdefault("SLUICE_SECRET_KEY", BENCH_SECRET_KEY)  # processes started here need one
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rest-jobs", type=int, default=10_000)
    parser.add_argument("--rest-secs", type=float, default=60)
    parser.add_argument("--no-worker", action="store_true")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--db-name", default="sluice_bench_sched")
    parser.add_argument("--redis-db", type=int, default=9)
    parser.add_argument("--skip-busy", action="store_true")
    parser.add_argument("--skip-rest", action="store_true")
    parser.add_argument("--keep-logs", type=Path, default=None, help="write process logs here (kept)")
    args = parser.parse_args()

    url = prepare_database(PG_ADMIN_URL, args.db_name)
    redis_url = f"{REDIS_BASE_URL}/{args.redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
           "SLUICE_LOG_JSON": "true", "SLUICE_LOG_LEVEL": "INFO", "SLUICE_METRICS_PORT": "0"}
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        workdir = args.keep_logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.skip_busy:
            rows += busy_minute(args, url, env, workdir)
            print_table(rows)
        if not args.skip_rest:
            insert_rest_jobs(args, url)
            rows += at_rest(args, env, workdir, "cron only", CRON_ONLY)
            rows += at_rest(args, env, workdir, "sluice scheduler", FULL_SCHEDULER)
    print(f"\n{os.cpu_count()} CPUs; busy minute measured on `sluice scheduler` (cron + maintenance loops)")
    print_table(rows)


if __name__ == "__main__":
    main()
