"""Benchmark of the jobs API: create, get, list (page of 50) and PATCH under 32 concurrent clients.

Starts the API as ``sluice api`` does, under gunicorn (2 workers × 8 gthread threads) against a dedicated
PostgreSQL database, seeds 10,000 jobs in one project, then drives each operation for ``--secs`` seconds
and prints a table.

    .venv/bin/python bench/jobs_api.py --secs 5
    .venv/bin/python bench/jobs_api.py --in-process 3000   # CPU per request, no server

The API measured is the tree this file is in, run by the interpreter that runs the benchmark (gunicorn is
started in the tree's directory). To compare two trees, run each tree's own copy with its own venv, e.g.
``/tmp/before/.venv/bin/python /tmp/before/bench/<this file>`` against this one, alternating.

Targets (issue "Control plane"): get ≥ 1,500 req/s, list ≥ 500 req/s with p99 ≤ 60 ms, create ≥ 600 req/s.
The client is deliberately cheap (one ``http.client`` keep-alive connection per thread, pre-encoded
bodies) because on a small machine it shares the CPU with the server.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench import wrk  # noqa: E402
from bench.support import BENCH_SECRET_KEY, cpu_secs_of_database_backends, cpu_secs_of_group, prepare_database  # noqa: E402
from shared.apikeys import create_key, parse_scopes  # noqa: E402
from shared.clock import utcnow  # noqa: E402
from shared.db.engine import make_engine, make_session_factory, transaction  # noqa: E402
from shared.ids import new_version_id, uuid7  # noqa: E402
from shared.jobs.config import config_for_create  # noqa: E402
from shared.jobs.store import JOBS, new_job_record  # noqa: E402
from shared.jobs.versions import VERSIONS, version_record  # noqa: E402

PROJECT = "bench"
ENDPOINT = "http://127.0.0.1:9/endpoint"




@dataclass
class OpStats:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    measured: wrk.WrkResult | None = None  # when wrk drove the operation
    server_cpu_secs: float = 0.0  # the gunicorn processes' CPU while the operation ran
    db_cpu_secs: float = 0.0  # the PostgreSQL backends' CPU (of the bench database) while it ran

    def row(self, name: str) -> str:
        done = sorted(self.latencies_ms)
        rate = len(done) / self.elapsed if self.elapsed else 0.0
        known = {0.50: self.measured.p50_ms, 0.99: self.measured.p99_ms} if self.measured else {}
        if self.measured:
            rate, self.errors = self.measured.rate, self.measured.errors

        def pct(p: float) -> float:
            if p in known:
                return known[p]
            return done[min(len(done) - 1, int(p * len(done)))] if done else 0.0

        served = rate * self.elapsed if not self.measured else self.measured.requests
        server_ms, db_ms = (secs * 1000 / served if served else 0.0
                            for secs in (self.server_cpu_secs, self.db_cpu_secs))
        return (f"| {name:<7} | {rate:>9.0f} | {pct(0.50):>7.1f} | {pct(0.99):>7.1f} | {self.errors:>6} "
                f"| {server_ms:>10.2f} | {db_ms:>8.2f} |")


def seed(url: str, count: int) -> tuple[str, list[str]]:
    """A key of the bench project and ``count`` jobs (bulk-inserted with their version 1)."""
    engine = make_engine(url, single_use=True)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        _, key = create_key(session, project_id=PROJECT, scopes=parse_scopes("*"), name="bench", now=utcnow())
    ids: list[str] = []
    base = utcnow() - timedelta(days=1)
    for start in range(0, count, 1000):
        jobs, versions = [], []
        for i in range(start, min(count, start + 1000)):
            config = config_for_create({"name": f"Seed {i}", "slug": f"seed-{i:05d}", "endpoint_url": ENDPOINT,
                                        "tags": {"team": f"t{i % 10}"}, "cron": "*/5 * * * *" if i % 3 else None})
            job_id, version_id = uuid7(), new_version_id()
            now = base + timedelta(milliseconds=i)
            jobs.append(new_job_record(job_id=job_id, project_id=PROJECT, config=config, version_id=version_id,
                                       actor="apikey:bench", now=now))
            versions.append(version_record(version_id=version_id, job_id=job_id, version=1, config=config,
                                           actor="apikey:bench", now=now))
            ids.append(job_id)
        with transaction(factory) as session:
            session.execute(sa.insert(JOBS), jobs)
            session.execute(sa.insert(VERSIONS), versions)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Fresh statistics and visibility map, as autovacuum gives a long-lived database, and the seed's dirty
        # pages written: otherwise autovacuum and the checkpointer work through the 10,000 inserts while the
        # first operation is measured.
        conn.execute(sa.text("VACUUM ANALYZE"))
        conn.execute(sa.text("CHECKPOINT"))
    engine.dispose()
    return key, ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WORKER_CLASS = "api.gunicorn_worker.BalancedThreadWorker"  # gthread, as ``sluice api`` runs it


def start_server(url: str, redis_url: str, port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=redis_url, SLUICE_ALLOW_PRIVATE_ENDPOINTS="true",
               SLUICE_LOG_LEVEL="WARNING", SLUICE_WORKER_THREADS=str(threads),
               PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="sluice-bench-metrics-"))
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
               "--threads", str(threads), "--worker-class", WORKER_CLASS, "--keep-alive", "30",
               "--log-level", "warning", "api.wsgi:app"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the API did not start")


Request = tuple[str, str, bytes | None]  # method, path, body


def drive(port: int, headers: dict[str, str], make_request: Callable[[random.Random, int], Request],
          expected: int, clients: int, secs: float) -> OpStats:
    """``clients`` threads, each on its own keep-alive connection, issuing requests until the deadline."""
    stats = OpStats()
    lock = threading.Lock()
    start_at = time.monotonic() + 0.2
    stop_at = start_at + secs

    def client(n: int) -> None:
        rng = random.Random(n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies: list[float] = []
        errors = seq = 0
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            method, path, body = make_request(rng, n * 10_000_000 + seq)
            seq += 1
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != expected:
                    errors += 1
                else:
                    latencies.append((time.monotonic() - now) * 1000)
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()
        with lock:
            stats.latencies_ms.extend(latencies)
            stats.errors += errors

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.elapsed = secs
    return stats


def cpu_per_request(url: str, redis_url: str, headers: dict[str, str], ids: list[str], ops: list[str],
                    requests: int) -> None:
    """In-process CPU per request of each operation (Flask test client, no server, no load generator):
    robust to a noisy machine, unlike req/s. The test client's own overhead (~0.15 ms) is included."""
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sluice-bench-metrics-"))
    from api.app import create_app
    from shared.config import Settings

    settings = Settings.from_env({"DATABASE_URL": url, "REDIS_URL": redis_url, "SLUICE_LOG_LEVEL": "WARNING",
                                  "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
                                  "SLUICE_SECRET_KEY": os.environ["SLUICE_SECRET_KEY"]})
    client = create_app(settings).test_client()
    rng = random.Random(7)
    calls: dict[str, Callable[[int], Any]] = {
        "get": lambda seq: client.get(f"/v1/jobs/{ids[rng.randrange(len(ids))]}", headers=headers),
        "list": lambda seq: client.get("/v1/jobs?limit=50", headers=headers),
        "create": lambda seq: client.post("/v1/jobs", headers=headers, data=json.dumps(
            {"name": f"CPU {seq}", "slug": f"cpu-{seq}", "endpoint_url": ENDPOINT, "cron": "0 * * * *",
             "tags": {"team": "bench"}})),
        "patch": lambda seq: client.patch(f"/v1/jobs/{ids[rng.randrange(len(ids))]}", headers=headers,
                                          data=json.dumps({"description": f"cpu {seq}"})),
    }
    print(f"\nIn-process CPU per request ({requests} requests each, after {requests // 10} warm-up):")
    seq = 0
    for name in ops:
        for timed in (False, True):
            began = time.process_time()
            count = requests if timed else requests // 10
            for _ in range(count):
                seq += 1
                response = calls[name](seq)
                if response.status_code >= 300:
                    raise SystemExit(f"{name}: HTTP {response.status_code} {response.data[:200]!r}")
        print(f"  {name:<7} {(time.process_time() - began) / requests * 1000:.3f} ms")


# The same four requests built by wrk (bench/wrk.py): ``ids`` is read from a file by ``wrk_init``.
WRK_REQUESTS = {
    "get": "return wrk.format('GET', '/v1/jobs/' .. ids[math.random(#ids)], nil, nil)",
    "list": "return wrk.format('GET', '/v1/jobs?limit=50', nil, nil)",
    "create": ("local slug = 'bench-' .. tid .. '-' .. n\n"
               "  return wrk.format('POST', '/v1/jobs', nil, '{\"name\":\"Bench ' .. slug .. '\",\"slug\":\"' .. slug"
               f" .. '\",\"endpoint_url\":\"{ENDPOINT}\",\"cron\":\"0 * * * *\",\"tags\":{{\"team\":\"bench\"}}}}')"),
    "patch": ("return wrk.format('PATCH', '/v1/jobs/' .. ids[math.random(#ids)], nil, "
              "'{\"description\":\"rev ' .. (n % 64) .. '\"}')"),
}


def wrk_init(ids_file: Path) -> str:
    return (f"ids = {{}}\n  for line in io.lines('{ids_file}') do table.insert(ids, line) end\n"
            "  math.randomseed(os.time() * 100 + tid)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("SLUICE_SECRET_KEY", BENCH_SECRET_KEY)  # processes started here need one
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secs", type=float, default=20.0, help="seconds per operation (default 20)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs seeded before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_bench_jobs")
    parser.add_argument("--redis-url", default=os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--ops", default="get,list,create,patch")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if wrk.available() else "python",
                        help="load generator (default: wrk when installed, see bench/wrk.py)")
    parser.add_argument("--in-process", type=int, default=0, metavar="N",
                        help="instead of the server, measure CPU per request in-process over N requests per op")
    args = parser.parse_args(argv)

    url = prepare_database(args.pg_admin_url, args.db_name)
    key, ids = seed(url, args.jobs)
    if args.in_process:
        cpu_per_request(url, args.redis_url, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                        ids, args.ops.split(","), args.in_process)
        return 0
    port = free_port()
    server = start_server(url, args.redis_url, port, args.workers, args.threads)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Connection": "keep-alive"}
    patch_bodies = [json.dumps({"description": f"rev {i}"}).encode() for i in range(64)]

    def create(rng: random.Random, seq: int) -> Request:
        body = {"name": f"Bench {seq}", "slug": f"bench-{seq}", "endpoint_url": ENDPOINT, "cron": "0 * * * *",
                "tags": {"team": "bench"}}
        return "POST", "/v1/jobs", json.dumps(body).encode()

    def get(rng: random.Random, seq: int) -> Request:
        return "GET", f"/v1/jobs/{ids[rng.randrange(len(ids))]}", None

    def list_page(rng: random.Random, seq: int) -> Request:
        return "GET", "/v1/jobs?limit=50", None

    def patch(rng: random.Random, seq: int) -> Request:
        return "PATCH", f"/v1/jobs/{ids[rng.randrange(len(ids))]}", patch_bodies[seq % len(patch_bodies)]

    ops: dict[str, tuple[Callable[[random.Random, int], Request], int]] = {
        "get": (get, 200), "list": (list_page, 200), "create": (create, 201), "patch": (patch, 200)}
    results: dict[str, OpStats] = {}
    ids_file = Path(tempfile.mkdtemp(prefix="sluice-bench-")) / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    try:
        drive(port, headers, get, 200, args.clients, 1.0)  # warm up connections and caches
        for name in args.ops.split(","):
            make_request, expected = ops[name]
            server_cpu, db_cpu = cpu_secs_of_group(server.pid), cpu_secs_of_database_backends(args.db_name)
            if args.client == "wrk":
                results[name] = OpStats(measured=wrk.run(port, headers, WRK_REQUESTS[name], clients=args.clients,
                                                         secs=args.secs, init_lua=wrk_init(ids_file)))
            else:
                results[name] = drive(port, headers, make_request, expected, args.clients, args.secs)
            results[name].server_cpu_secs = cpu_secs_of_group(server.pid) - server_cpu
            results[name].db_cpu_secs = cpu_secs_of_database_backends(args.db_name) - db_cpu
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"\njobs API: gunicorn {args.workers} workers x {args.threads} threads ({WORKER_CLASS}, gthread), "
          f"{args.clients} clients ({args.client}), "
          f"{args.jobs} seeded jobs, {args.secs:g} s per operation, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| op      |     req/s |  p50 ms |  p99 ms | errors | server CPU | db CPU   |")
    print("|         |           |         |         |        | ms/req     | ms/req   |")
    print("|---------|-----------|---------|---------|--------|------------|----------|")
    for name, stats in results.items():
        print(stats.row(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
