"""Benchmark of the web console's pages with 10,000 jobs and 1,000,000 runs in one project.

Seeds a dedicated database (the jobs as ``bench/jobs_api.py`` seeds them: two in three on a cron schedule;
the runs in one ``INSERT … SELECT generate_series``: 30 days of history, 90 % completed, the rest failed,
canceled, timed out, crashed, expired, the newest 100 queued, one in ten created by cron), then requests
each console page through the WSGI app in process (no server, no network: the page's own time, which a
noisy machine disturbs least) and prints p50 and p95 per page. Target: p50 ≤ 100 ms for every page.

    .venv/bin/python bench/console.py                       # 10,000 jobs, 1,000,000 runs, 30 requests a page
    .venv/bin/python bench/console.py --runs 100000 --requests 10   # smoke check

``--api-only`` measures the API requests whose code the console shares (a job's health, the runs list,
the jobs list filtered), so that the tree before the console can be measured by the same script:
``SLUICE_BENCH_TREE=/path/to/before /path/to/before/.venv/bin/python bench/console.py --api-only``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("SLUICE_BENCH_TREE") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench.support import BENCH_SECRET_KEY, cpu_secs_of_database_backends, prepare_database  # noqa: E402

PROJECT = "bench"
SEED_RUNS_SQL = """
WITH j AS (SELECT array_agg(id ORDER BY created_at) AS ids, array_agg(version_id ORDER BY created_at) AS vids,
                  count(*) AS n FROM jobs WHERE project_id = :project),
g AS (SELECT s, now() - s * (interval '30 days' / :runs) AS at, s % 100 AS bucket FROM generate_series(1, :runs) s)
INSERT INTO runs (id, job_id, project_id, status, attempt, payload, payload_hash, metadata, error, error_class,
                  triggered_by, scheduled_at, started_at, finished_at, priority, idempotency_key, job_version,
                  job_version_id, retry_backoff, retry_initial_delay_secs, retry_max_delay_secs, execution_trace,
                  debug_mode, lineage_depth, tags, created_by, created_at, queued_at)
SELECT gen_random_uuid()::text, j.ids[1 + s % j.n], :project,
       CASE WHEN s <= 100 THEN 'queued' WHEN bucket < 90 THEN 'completed' WHEN bucket < 95 THEN 'failed'
            WHEN bucket < 97 THEN 'canceled' WHEN bucket = 97 THEN 'timed_out' WHEN bucket = 98 THEN 'crashed'
            ELSE 'expired' END,
       CASE WHEN s <= 100 OR bucket >= 95 THEN 0 ELSE 1 END,
       '{"n":' || s || '}', md5(s::text) || md5(s::text), '{}'::jsonb,
       CASE WHEN s > 100 AND bucket BETWEEN 90 AND 94 THEN 'HTTP 500: {"error": "down"}' END,
       CASE WHEN s > 100 AND bucket BETWEEN 90 AND 94 THEN 'server' END,
       CASE WHEN s % 10 = 0 THEN 'cron' ELSE 'manual' END,
       CASE WHEN s % 10 = 0 THEN date_trunc('minute', at) END,
       CASE WHEN s > 100 AND bucket < 95 THEN at + interval '50 ms' END,
       CASE WHEN s > 100 THEN at + interval '50 ms' + (s % 1000) * interval '1 ms' END,
       0,
       CASE WHEN s % 10 = 0
            THEN 'cron:' || j.ids[1 + s % j.n] || ':' || to_char(at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END,
       1, j.vids[1 + s % j.n], 'exponential', 1, 60,
       CASE WHEN s > 100 AND bucket < 95 THEN '{"queue_wait_ms": 3, "dequeue_ms": 1, "connect_ms": 1, "ttfb_ms": 20,
            "transfer_ms": 1, "dispatch_ms": 23, "total_ms": 27}'::jsonb END,
       false, 0, jsonb_build_object('team', 't' || (s % 10)), 'apikey:bench', at,
       CASE WHEN s <= 100 THEN at END
FROM g, j
"""
EVENTS_SQL = """
INSERT INTO run_events (run_id, created_at, id, type, message, data)
SELECT r.id, r.created_at + e * interval '1 ms', gen_random_uuid()::text, 'state_change', NULL,
       jsonb_build_object('from', CASE WHEN e = 0 THEN NULL ELSE 'queued' END, 'to', 'executing')
FROM (SELECT id, created_at FROM runs WHERE status = 'failed' ORDER BY created_at DESC LIMIT 50) r,
     generate_series(0, 5) e
"""


def seed(url: str, jobs: int, runs: int) -> tuple[str, str, str]:
    """The bench project's key, the slug of a job with runs and the id of a failed run (with events)."""
    from bench.jobs_api import seed as seed_jobs
    from shared.db.engine import make_engine

    started = time.monotonic()
    key, _ids = seed_jobs(url, jobs)
    engine = make_engine(url, single_use=True)
    with engine.begin() as conn:
        conn.execute(sa.text(SEED_RUNS_SQL), {"project": PROJECT, "runs": runs})
        conn.execute(sa.text(EVENTS_SQL))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        conn.execute(sa.text("CHECKPOINT"))
        slug, run_id = conn.execute(sa.text(
            "SELECT j.slug, r.id FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.status = 'failed' "
            "ORDER BY r.created_at DESC LIMIT 1")).one()
    engine.dispose()
    print(f"seeded {jobs:,} jobs and {runs:,} runs in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return key, slug, run_id


def pages(slug: str, run_id: str) -> list[tuple[str, str]]:
    return [
        ("jobs", "/ui/jobs"),
        ("jobs: search", "/ui/jobs?q=seed-0999"),
        ("jobs: disabled", "/ui/jobs?enabled=false"),
        ("job page", f"/ui/jobs/{slug}"),
        ("job page: 30d health", f"/ui/jobs/{slug}?window=30d"),
        ("trigger form", f"/ui/jobs/{slug}/trigger"),
        ("runs", "/ui/runs"),
        ("runs: failed", "/ui/runs?status=failed"),
        ("runs: job", f"/ui/runs?job_id={slug}"),
        ("runs: cron, last day", "/ui/runs?triggered_by=cron&created_after=" + _day_ago()),
        ("runs: tag", "/ui/runs?tag_key=team&tag_value=t3"),
        ("run page", f"/ui/runs/{run_id}"),
        ("dead letters", "/ui/dead-letters"),
        ("fleet", "/ui/fleet"),
    ]


def api_requests(slug: str) -> list[tuple[str, str]]:
    return [
        ("API: job health 7d", f"/v1/jobs/{slug}/health"),
        ("API: job health 30d", f"/v1/jobs/{slug}/health?window=30d"),
        ("API: runs", "/v1/runs"),
        ("API: DLQ", "/v1/runs/dlq"),
        ("API: jobs by tag", "/v1/jobs?tag_key=team&tag_value=t3"),
    ]


def _day_ago() -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def measure(client: Any, path: str, requests: int, headers: dict[str, str], database: str
            ) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, CPU ms per request of this process and its PostgreSQL backends). The CPU figure is
    what a request costs whatever else the machine runs: on an idle machine a page answers in about that."""
    for _ in range(3):  # warm: prepared statements, caches, the plan of each statement
        response = client.get(path, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.get_data(as_text=True)[:300]}")
    times = []
    cpu_before = time.process_time() + cpu_secs_of_database_backends(database)
    for _ in range(requests):
        started = time.perf_counter()
        client.get(path, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
    cpu_ms = (time.process_time() + cpu_secs_of_database_backends(database) - cpu_before) * 1000 / requests
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))], cpu_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--api-only", action="store_true", help="only the API requests (runs on older trees)")
    parser.add_argument("--reuse", action="store_true", help="measure the database a previous run seeded")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_bench_console")
    parser.add_argument("--redis-url", default=os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10"))
    args = parser.parse_args(argv)

    from api.app import create_app
    from shared.apikeys import create_key, parse_scopes
    from shared.clock import utcnow
    from shared.config import Settings
    from shared.db.engine import make_engine, make_session_factory, transaction

    if args.reuse:
        url = args.pg_admin_url.rsplit("/", 1)[0] + "/" + args.db_name
        engine = make_engine(url, single_use=True)
        with transaction(make_session_factory(engine)) as session:
            _, key = create_key(session, project_id=PROJECT, scopes=parse_scopes("*"), name="bench", now=utcnow())
            slug, run_id = session.execute(sa.text(
                "SELECT j.slug, r.id FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.status = 'failed' "
                "ORDER BY r.created_at DESC LIMIT 1")).one()
        engine.dispose()
    else:
        url = prepare_database(args.pg_admin_url, args.db_name)
        key, slug, run_id = seed(url, args.jobs, args.runs)
    settings = Settings.from_env({"DATABASE_URL": url, "SLUICE_SECRET_KEY": BENCH_SECRET_KEY}).with_overrides(
        redis_url=args.redis_url, log_json=False)
    app = create_app(settings)
    client = app.test_client()
    rows = [(name, path, {"Authorization": f"Bearer {key}"}) for name, path in api_requests(slug)]
    if not args.api_only:
        client.set_cookie("sluice_console", key, path="/ui")
        rows = [(name, path, {}) for name, path in pages(slug, run_id)] + rows
    print(f"| Request ({args.jobs:,} jobs, {args.runs:,} runs; tree {ROOT.name}) | p50 ms | p95 ms | CPU ms |")
    print("|---|---:|---:|---:|")
    for name, path, headers in rows:
        p50, p95, cpu_ms = measure(client, path, args.requests, headers, args.db_name)
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {cpu_ms:.1f} |", flush=True)
    app.extensions["sluice"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
