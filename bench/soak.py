"""Soak: the whole product under mixed load for ``--minutes`` (30), with a worker SIGKILL and a Redis restart.

Starts a private ``redis-server`` on a free port (no persistence: its restart loses every key, like a
cache node replaced), a fresh database, the sink, ``sluice api`` (gunicorn), ``sluice worker`` and
``sluice scheduler``. Load, over HTTP with an API key, from ``--clients`` threads at ``--rate`` triggers/s in
all: a plain job, a job behind ``max_concurrency: 2`` with a per-customer rate limit, a job whose endpoint
refuses connections (retried, then ``failed``), runs of another project, and ``--cron-jobs`` jobs on
``* * * * *``. At one third of the run one worker process is SIGKILLed (its supervisor starts another); at
two thirds Redis is restarted empty. Then triggering stops and the system drains for up to ``--drain-secs``.

It reports: runs accepted (HTTP 201) and how many of them are missing (lost) or not finished after the
drain (stuck); cron runs; trigger latency p50/p99 over the first and the last ``--sample-minutes`` of load
(after ``--warmup-secs``); the RSS of every process at the start (after warm-up) and at the end.
Targets: 0 lost, 0 stuck, p99 at the end ≤ 1.5 × p99 at the start, memory flat.

    .venv/bin/python bench/soak.py                    # 30 minutes
    .venv/bin/python bench/soak.py --minutes 5        # shorter
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import BENCH_SECRET_KEY, SinkProcess, percentile, prepare_database  # noqa: E402
from shared.apikeys import create_key, parse_scopes  # noqa: E402
from shared.clock import utcnow  # noqa: E402
from shared.db.engine import make_engine, make_session_factory  # noqa: E402

SLUICE = str(Path(sys.executable).parent / "sluice")
FINISHED = ("completed", "failed", "timed_out", "crashed", "canceled", "expired", "system_failed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sluice-soak-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return sorted(pids)


class Load:
    """Trigger threads: each request's latency with its time, and the run ids accepted."""

    def __init__(self, port: int, headers: dict[str, dict[str, str]], rate: float, clients: int) -> None:
        self.port, self.headers, self.rate, self.clients = port, headers, rate, clients
        self.latencies: list[tuple[float, float]] = []  # (monotonic time, ms)
        self.accepted: list[str] = []
        self.refused: dict[int, int] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        interval = self.clients / self.rate
        while not self.stop.is_set():
            slug, project = rng.choice([("plain", "a"), ("plain", "a"), ("limited", "a"), ("failing", "a"),
                                        ("other", "b")])
            body = json.dumps({"payload": {"n": rng.randrange(1000)},
                               "metadata": {"customer": f"c{rng.randrange(3)}"}}).encode()
            started = time.monotonic()
            try:
                conn.request("POST", f"/v1/jobs/{slug}/trigger", body=body,
                             headers={**self.headers[project], "Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                status, data = 0, b""
            ms = (time.monotonic() - started) * 1000
            with self.lock:
                self.latencies.append((started, ms))
                if status == 201:
                    self.accepted.append(json.loads(data)["id"])
                else:
                    self.refused[status] = self.refused.get(status, 0) + 1
            self.stop.wait(max(0.0, interval - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="triggers per second, all clients together")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--cron-jobs", type=int, default=20)
    parser.add_argument("--warmup-secs", type=float, default=60.0)
    parser.add_argument("--sample-minutes", type=float, default=3.0)
    parser.add_argument("--drain-secs", type=float, default=240.0)
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_fairness_soak")
    args = parser.parse_args(argv)

    dsn = prepare_database(args.pg_admin_url, args.db_name)
    redis_server = RedisServer()
    redis_server.start()
    sink = SinkProcess()
    engine = make_engine(dsn, pool_size=2)
    factory = make_session_factory(engine)
    headers = {}
    with factory() as s:
        for project in ("a", "b"):
            _, key = create_key(s, project_id=f"proj-{project}", scopes=parse_scopes("*"), name="soak", now=utcnow())
            headers[project] = {"Authorization": f"Bearer {key}"}
        s.commit()
    api_port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "REDIS_URL": redis_server.url, "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
           "SLUICE_LOG_LEVEL": os.environ.get("SLUICE_BENCH_LOG_LEVEL", "WARNING"), "SLUICE_API_BIND":
           f"127.0.0.1:{api_port}", "SLUICE_HEARTBEAT_INTERVAL_SECS": "5", "SLUICE_STALE_AFTER_SECS": "20",
           "SLUICE_METRICS_PORT": "0", "SLUICE_WORKER_THREADS": "4", "SLUICE_API_THREADS": "4",
           "SLUICE_SECRET_KEY": os.environ.get("SLUICE_SECRET_KEY", BENCH_SECRET_KEY)}
    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([SLUICE, "worker", "--processes", "1", "--threads", "4"], env=env,
                                start_new_session=True)

    procs = {
        # A small fleet: few PostgreSQL connections on a shared server.
        "api": subprocess.Popen([SLUICE, "api", "--workers", "1"], env=env, cwd=ROOT, start_new_session=True),
        "worker": start_worker(),
        "scheduler": subprocess.Popen([SLUICE, "scheduler"], env=env, start_new_session=True),
    }
    closed = free_port()  # nothing listens: the failing job's calls are refused
    jobs = [("a", {"name": "plain", "slug": "plain", "endpoint_url": sink.url}),
            ("a", {"name": "limited", "slug": "limited", "endpoint_url": sink.url, "max_concurrency": 2,
                   "rate_limit_keys": [{"name": "customer", "max": 5, "window_secs": 1}]}),
            ("a", {"name": "failing", "slug": "failing", "endpoint_url": f"http://127.0.0.1:{closed}/",
                   "max_attempts": 2}),
            ("b", {"name": "other", "slug": "other", "endpoint_url": sink.url})]
    jobs += [("b", {"name": f"cron {i}", "slug": f"cron-{i}", "endpoint_url": sink.url, "cron": "* * * * *"})
             for i in range(args.cron_jobs)]
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.5)
    for project, body in jobs:
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
        conn.request("POST", "/v1/jobs", body=json.dumps(body).encode(),
                     headers={**headers[project], "Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 201, (response.status, response.read())
        response.read()

    load = Load(api_port, headers, args.rate, args.clients)
    began = time.monotonic()
    load.start()
    total = args.minutes * 60
    time.sleep(args.warmup_secs)
    rss_start = {name: {pid: rss_mb(pid) for pid in group_pids(p.pid)} for name, p in procs.items()}
    events: list[str] = []
    killed = False
    restarted = False
    while time.monotonic() - began < total:
        elapsed = time.monotonic() - began
        if not killed and elapsed > total / 3:
            children = [pid for pid in group_pids(procs["worker"].pid) if pid != procs["worker"].pid]
            if children:  # a supervisor restarts its child
                os.kill(children[0], signal.SIGKILL)
                events.append(f"{elapsed:.0f} s: SIGKILL worker process {children[0]}")
            else:  # one process, no supervisor: kill it and start another, as a process manager would
                victim = procs["worker"].pid
                os.killpg(victim, signal.SIGKILL)
                procs["worker"].wait(10)
                procs["worker"] = start_worker()
                events.append(f"{elapsed:.0f} s: SIGKILL worker process {victim}, a new one started")
            killed = True
        if not restarted and elapsed > 2 * total / 3:
            redis_server.stop()
            redis_server.start()
            events.append(f"{elapsed:.0f} s: Redis restarted empty")
            restarted = True
        time.sleep(1)
    rss_end = {name: {pid: rss_mb(pid) for pid in group_pids(p.pid)} for name, p in procs.items()}
    # (a worker started after the SIGKILL has no start figure: its row shows nan at the start)
    load.join()
    ended = time.monotonic()

    accepted = list(load.accepted)
    drain_deadline = time.monotonic() + args.drain_secs
    unfinished: list[str] = accepted
    missing: list[str] = []
    while time.monotonic() < drain_deadline:
        with factory() as s:
            found = dict(s.execute(sa.text("SELECT id, status FROM runs WHERE id = ANY(:ids)"),
                                   {"ids": accepted}).tuples().all())
        missing = [run_id for run_id in accepted if run_id not in found]
        unfinished = [run_id for run_id, status in found.items() if status not in FINISHED]
        if not unfinished:
            break
        time.sleep(2)
    with factory() as s:
        statuses = dict(s.execute(sa.text("SELECT status, count(*) FROM runs GROUP BY status")).tuples().all())
        cron_runs = s.execute(sa.text("SELECT count(*) FROM runs WHERE triggered_by = 'cron'")).scalar()
        stuck_all = s.execute(sa.text(
            "SELECT count(*) FROM runs WHERE status NOT IN ('completed', 'failed', 'timed_out', 'crashed', "
            "'canceled', 'expired', 'system_failed')")).scalar()

    for proc in procs.values():
        with_signal(proc, signal.SIGTERM)
    sink.stop()
    redis_server.stop()
    engine.dispose()

    sample = args.sample_minutes * 60
    first = [ms for t, ms in load.latencies if began + args.warmup_secs <= t < began + args.warmup_secs + sample]
    last = [ms for t, ms in load.latencies if ended - sample <= t]
    print(f"Soak: {args.minutes:g} min, {args.rate:g} triggers/s over {args.clients} clients, "
          f"{args.cron_jobs} cron jobs every minute")
    for line in events:
        print(f"- {line}")
    print("\n| measure | value |\n|---|---|")
    print(f"| triggers accepted (201) | {len(accepted)} |")
    print(f"| triggers not accepted, by status | {dict(sorted(load.refused.items())) or '-'} |")
    print(f"| accepted runs missing (lost) | {len(missing)} |")
    print(f"| accepted runs unfinished after {args.drain_secs:g} s of drain (stuck) | {len(unfinished)} |")
    print(f"| all runs unfinished (incl. cron) | {stuck_all} |")
    print(f"| cron runs | {cron_runs} |")
    print(f"| runs by status | {dict(sorted(statuses.items()))} |")
    p99_first, p99_last = percentile(first, 99), percentile(last, 99)
    print(f"| trigger p50 / p99 ms, first {args.sample_minutes:g} min after warm-up | "
          f"{percentile(first, 50):.1f} / {p99_first:.1f} |")
    print(f"| trigger p50 / p99 ms, last {args.sample_minutes:g} min | {percentile(last, 50):.1f} / {p99_last:.1f} |")
    print(f"| p99 last / first (target ≤ 1.5) | {p99_last / p99_first:.2f} |")
    print("\n| process | pid | RSS MB at start | RSS MB at end |\n|---|---|---|---|")
    for name in procs:
        for pid in sorted(set(rss_start[name]) | set(rss_end[name])):
            start, end = rss_start[name].get(pid, float("nan")), rss_end[name].get(pid, float("nan"))
            print(f"| {name} | {pid} | {start:.1f} | {end:.1f} |")
    return 0 if not missing and not unfinished else 1


def with_signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
        proc.wait(30)
    except (OSError, subprocess.TimeoutExpired):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
