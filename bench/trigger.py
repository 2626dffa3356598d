"""Benchmark of triggering: single trigger and bulk trigger, Sluice against a bare reference endpoint.

Starts two servers under the same gunicorn configuration (2 workers × 8 gthread threads by default, the
worker class ``sluice api`` runs) on a
dedicated PostgreSQL database and Redis DB: the Sluice API and ``bench/reference_app.py`` (one INSERT +
one enqueue, no Sluice code). Then, for ``--rounds`` rounds, alternately measures:

- single: ``POST /v1/jobs/{job}/trigger`` with a small payload, ``--clients`` concurrent clients (32) for
  ``--secs`` seconds (20): req/s, p50, p99;
- bulk: ``POST …/trigger/bulk`` with 1,000-item requests from ``--bulk-clients`` clients (4): runs/s.

Runs, events and queued messages are wiped before every measurement so each starts from the same state.
The table shows the median of the rounds and the ratio Sluice / reference.

    .venv/bin/python bench/trigger.py --secs 20 --rounds 3
    .venv/bin/python bench/trigger.py --in-process 5000   # CPU per request, Sluice vs reference

The API measured is the tree this file is in, run by the interpreter that runs the benchmark (gunicorn is
started in the tree's directory). To compare two trees, run each tree's own copy with its own venv, e.g.
``/tmp/before/.venv/bin/python /tmp/before/bench/<this file>`` against this one, alternating.

Targets (issue "Triggering and the runs API"): single ≥ 1,000 req/s and ≥ 0.8 × reference with p99 ≤ 60 ms;
bulk ≥ 10,000 runs/s. The client (one keep-alive ``http.client`` connection per thread, pre-encoded
bodies) shares the machine with both servers, PostgreSQL and Redis; ``--cpus`` reports how many it had.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench import wrk  # noqa: E402
from bench.support import BENCH_SECRET_KEY, cpu_secs_of_database_backends, cpu_secs_of_group, prepare_database  # noqa: E402
from shared.apikeys import create_key, parse_scopes  # noqa: E402
from shared.clock import utcnow  # noqa: E402
from shared.db.engine import make_engine, make_session_factory, transaction  # noqa: E402
from shared.db.models import Job, JobVersion  # noqa: E402
from shared.ids import new_version_id, uuid7  # noqa: E402

PROJECT = "bench"
SLUG = "bench-trigger"
BULK_ITEMS = 1000




@dataclass
class Measure:
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    secs: float = 0.0
    known_pcts: dict[float, float] = field(default_factory=dict)  # from wrk's histogram
    cpu_secs: float = 0.0  # server processes + their PostgreSQL backends (robust to a noisy machine)

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_secs * 1000 / self.requests if self.requests else 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.secs if self.secs else 0.0

    def pct(self, p: float) -> float:
        if p in self.known_pcts:
            return self.known_pcts[p]
        done = sorted(self.latencies_ms)
        return done[min(len(done) - 1, int(p * len(done)))] if done else 0.0


def seed(url: str) -> str:
    """An all-scopes key of the bench project and one plain job (no schema, key, dedup or edges)."""
    engine = make_engine(url, single_use=True)
    factory = make_session_factory(engine)
    now = utcnow()
    config = {"name": "Bench", "slug": SLUG, "endpoint_url": "http://127.0.0.1:9/endpoint", "tags": {"team": "b"},
              "max_attempts": 3, "timeout_secs": 30, "retry_strategy": "exponential", "retry_delays_secs": [],
              "enabled": True, "timezone": "UTC", "default_run_metadata": {}, "rate_limit_keys": []}
    with transaction(factory) as session:
        _, key = create_key(session, project_id=PROJECT, scopes=parse_scopes("*"), name="bench", now=now)
        version_id = new_version_id()
        job = Job(id=uuid7(), project_id=PROJECT, version=1, version_id=version_id, created_by="apikey:bench",
                  updated_by="apikey:bench", created_at=now, updated_at=now, schedule_changed_at=now, **config)
        session.add(job)
        session.flush()
        session.add(JobVersion(id=version_id, job_id=job.id, version=1, config=config, created_by="apikey:bench",
                               created_at=now))
    engine.dispose()
    return key


def wipe(url: str, redis_url: str) -> None:
    engine = make_engine(url, single_use=True)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE webhook_deliveries, run_events, runs, batches"))
        if sa.inspect(conn).has_table("ref_runs"):
            conn.execute(sa.text("TRUNCATE ref_runs"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE runs"))
        conn.execute(sa.text("VACUUM ANALYZE run_events"))
    engine.dispose()
    redis.Redis.from_url(redis_url).flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(app: str, env: dict[str, str], port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
               "--threads", str(threads), "--worker-class", "api.gunicorn_worker.BalancedThreadWorker",
               "--keep-alive", "30",
               "--log-level", "warning", app]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", f"/v1/jobs/{SLUG}/trigger", body=b"{}",
                         headers=json.loads(env["_BENCH_HEADERS_JSON"]))
            if conn.getresponse().status in (200, 201):
                return process
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise SystemExit(f"{app} did not start")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def drive(port: int, headers: dict[str, str], path: str, body: Callable[[int], bytes], clients: int,
          secs: float, weight: int = 1) -> Measure:
    """``clients`` threads on keep-alive connections POST ``body(seq)`` to ``path`` until the deadline.
    ``weight`` is how many runs one successful request accepts (bulk: items per request)."""
    result = Measure(secs=secs)
    lock = threading.Lock()
    start_at = time.monotonic() + 0.2
    stop_at = start_at + secs

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies: list[float] = []
        done = errors = seq = 0
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while True:
            began = time.monotonic()
            if began >= stop_at:
                break
            payload = body(n * 10_000_000 + seq)
            seq += 1
            try:
                conn.request("POST", path, body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            if response.status in (200, 201):
                done += weight
                latencies.append((time.monotonic() - began) * 1000)
            else:
                errors += 1
        conn.close()
        with lock:
            result.latencies_ms.extend(latencies)
            result.requests += done
            result.errors += errors

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


# The same body as ``single_body``, built by wrk (``bench/wrk.py``): unique order ids per wrk thread.
SINGLE_BODY_LUA = (
    "local body = string.format('{\"payload\":{\"order_id\":%d,\"customer\":\"c-%d\",\"items\":[1,2,3]},"
    "\"tags\":{\"src\":\"bench\"}}', tid * 10000000 + n, n % 97)\n"
    f"  return wrk.format('POST', '/v1/jobs/{SLUG}/trigger', nil, body)")


def drive_single(port: int, headers: dict[str, str], clients: int, secs: float, client: str) -> Measure:
    if client == "python":
        return drive(port, headers, f"/v1/jobs/{SLUG}/trigger", single_body, clients, secs)
    result = wrk.run(port, headers, SINGLE_BODY_LUA, clients=clients, secs=secs)
    return Measure(requests=result.ok, errors=result.errors, secs=result.secs,
                   known_pcts={0.5: result.p50_ms, 0.99: result.p99_ms})


def single_body(seq: int) -> bytes:
    return b'{"payload":{"order_id":%d,"customer":"c-%d","items":[1,2,3]},"tags":{"src":"bench"}}' % (seq, seq % 97)


def bulk_body(seq: int) -> bytes:
    items = [{"payload": {"order_id": seq * BULK_ITEMS + i, "customer": f"c-{i % 97}"}} for i in range(BULK_ITEMS)]
    return json.dumps({"items": items}, separators=(",", ":")).encode()


def cpu_per_request(url: str, redis_url: str, headers: dict[str, str], requests: int, chunks: int = 10) -> None:
    """In-process CPU per single trigger (Flask test client, no server, no load generator): Sluice and the
    reference alternate in ``chunks`` chunks and the medians are printed. Robust to a noisy machine,
    unlike req/s; the test client's own overhead (~0.15 ms) is in both numbers."""
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sluice-bench-metrics-"))
    from api.app import create_app
    from shared.config import Settings

    settings = Settings.from_env({"DATABASE_URL": url, "REDIS_URL": redis_url, "SLUICE_LOG_LEVEL": "WARNING",
                                  "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
                                  "SLUICE_SECRET_KEY": os.environ["SLUICE_SECRET_KEY"]})
    os.environ.update(REF_DATABASE_URL=url, REF_REDIS_URL=redis_url)
    from bench.reference_app import create_app as create_reference

    clients = {"sluice": create_app(settings).test_client(), "reference": create_reference().test_client()}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    per_chunk = max(requests // chunks, 1)
    for chunk in range(chunks + 1):  # chunk 0 warms up and is discarded
        for name, client in clients.items():
            began = time.process_time()
            for seq in range(per_chunk):
                response = client.post(f"/v1/jobs/{SLUG}/trigger", data=single_body(seq), headers=headers)
                if response.status_code != 201:
                    raise SystemExit(f"{name}: HTTP {response.status_code} {response.data[:200]!r}")
            if chunk:
                samples[name].append((time.process_time() - began) / per_chunk * 1000)
    sluice, reference = statistics.median(samples["sluice"]), statistics.median(samples["reference"])
    print(f"\nIn-process CPU per single trigger (median of {chunks} chunks of {per_chunk}): sluice {sluice:.3f} ms, "
          f"reference {reference:.3f} ms, reference/sluice {reference / sluice:.2f}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("SLUICE_SECRET_KEY", BENCH_SECRET_KEY)  # processes started here need one
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secs", type=float, default=20.0, help="seconds per measurement (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating reference/Sluice rounds (default 3)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--bulk-clients", type=int, default=4)
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if wrk.available() else "python",
                        help="load generator of the single-trigger measurement (default: wrk when installed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_bench_trigger")
    parser.add_argument("--redis-url", default=os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    parser.add_argument("--only", choices=["single", "bulk"], default=None)
    parser.add_argument("--in-process", type=int, default=0, metavar="N",
                        help="instead of the servers, measure CPU per single trigger in-process over N requests")
    args = parser.parse_args(argv)

    url = prepare_database(args.pg_admin_url, args.db_name)
    key = seed(url)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if args.in_process:
        cpu_per_request(url, args.redis_url, headers, args.in_process)
        return 0
    base_env = dict(os.environ, SLUICE_ALLOW_PRIVATE_ENDPOINTS="true", SLUICE_LOG_LEVEL="WARNING",
                    SLUICE_WORKER_THREADS=str(args.threads), _BENCH_HEADERS_JSON=json.dumps(headers),
                    PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="sluice-bench-metrics-"))
    servers = {
        "sluice": (free_port(), "api.wsgi:app", dict(base_env, DATABASE_URL=url, REDIS_URL=args.redis_url)),
        "reference": (free_port(), "bench.reference_app:create_app()",
                      dict(base_env, REF_DATABASE_URL=url, REF_REDIS_URL=args.redis_url)),
    }
    processes = {name: start_server(app, env, port, args.workers, args.threads)
                 for name, (port, app, env) in servers.items()}
    results: dict[tuple[str, str], list[Measure]] = {}
    kinds = [k for k in ("single", "bulk") if args.only in (None, k)]
    try:
        for round_no in range(1, args.rounds + 1):
            for kind in kinds:
                for name in ("reference", "sluice"):
                    wipe(url, args.redis_url)
                    port = servers[name][0]
                    app_before = cpu_secs_of_group(processes[name].pid)
                    db_before = cpu_secs_of_database_backends(args.db_name)
                    if kind == "single":
                        m = drive_single(port, headers, args.clients, args.secs, args.client)
                    else:
                        m = drive(port, headers, f"/v1/jobs/{SLUG}/trigger/bulk", bulk_body, args.bulk_clients,
                                  args.secs, weight=BULK_ITEMS)
                    app_secs = cpu_secs_of_group(processes[name].pid) - app_before
                    m.cpu_secs = app_secs + cpu_secs_of_database_backends(args.db_name) - db_before
                    results.setdefault((kind, name), []).append(m)
                    print(f"round {round_no} {kind:<6} {name:<9} {m.rate:>9.0f}/s  p50 {m.pct(0.5):6.1f} ms  "
                          f"p99 {m.pct(0.99):6.1f} ms  errors {m.errors}  server+db CPU "
                          f"{m.cpu_ms_per_request * (BULK_ITEMS if kind == 'bulk' else 1):.3f} ms/req "
                          f"(app {app_secs / m.cpu_secs:.0%})", flush=True)
    finally:
        for process in processes.values():
            stop_server(process)
    print_table(results, args, kinds)
    return 0


def print_table(results: dict[tuple[str, str], list[Measure]], args: argparse.Namespace, kinds: list[str]) -> None:
    def med(kind: str, name: str, f: Callable[[Measure], float]) -> float:
        return statistics.median(f(m) for m in results[(kind, name)])

    print(f"\nTrigger benchmark: {args.workers} workers × {args.threads} threads, {args.clients} clients (bulk "
          f"{args.bulk_clients} × {BULK_ITEMS} items), {args.secs:g} s × {args.rounds} rounds, "
          f"{args.client} client, "
          f"{os.cpu_count()} CPUs shared by client, servers, PostgreSQL and Redis. Medians of the rounds.\n")
    print("| measurement            | reference | sluice | ratio | sluice p50 ms | sluice p99 ms | ref p99 ms "
          "| errors |")
    print("|------------------------|-----------|--------|-------|---------------|---------------|------------"
          "|--------|")
    for kind in kinds:
        unit = "req/s" if kind == "single" else "runs/s"
        ref, slu = med(kind, "reference", lambda m: m.rate), med(kind, "sluice", lambda m: m.rate)
        errors = sum(m.errors for name in ("reference", "sluice") for m in results[(kind, name)])
        p50, p99 = med(kind, "sluice", lambda m: m.pct(0.5)), med(kind, "sluice", lambda m: m.pct(0.99))
        ref_p99 = med(kind, "reference", lambda m: m.pct(0.99))
        label = f"{kind} trigger ({unit})"
        print(f"| {label:<22} | {ref:>9.0f} | {slu:>6.0f} | {slu / ref if ref else 0:>5.2f} | {p50:>13.1f} "
              f"| {p99:>13.1f} | {ref_p99:>10.1f} | {errors:>6} |")
    print("\nCPU per accepted run (ms): the server's processes plus its PostgreSQL backends, same rounds — the\n"
          "measure least disturbed by other load on the machine.\n")
    print("| measurement            | reference | sluice | reference / sluice |")
    print("|------------------------|-----------|--------|--------------------|")
    for kind in kinds:
        ref_cpu = med(kind, "reference", lambda m: m.cpu_ms_per_request)
        slu_cpu = med(kind, "sluice", lambda m: m.cpu_ms_per_request)
        print(f"| {kind + ' trigger':<22} | {ref_cpu:>9.3f} | {slu_cpu:>6.3f} | "
              f"{ref_cpu / slu_cpu if slu_cpu else 0:>18.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
