"""Retention benchmark: pruning a million old runs does not stall triggering.

A freshly migrated database gets ``--rows`` finished runs (one event and one webhook delivery each), all
finished 60 days ago, spread over ``--jobs`` jobs. Then ``--clients`` threads trigger runs as the API's
pipeline does (create + commit + enqueue, no HTTP) for ``--secs`` seconds, twice:

* **without pruning**;
* **while pruning**: the scheduler's ``prune_retention`` task (``SLUICE_RETENTION_DAYS=30``) runs in the
  maintenance loop as ``sluice scheduler`` runs it, deleting 1,000 runs per pass back to back.

The table shows trigger latency p50/p99 and triggers/s for each phase, and the rows pruned per second.
Rounds alternate the two phases (``--rounds``); medians.

    .venv/bin/python bench/retention.py                       # 1,000,000 rows, 3 rounds of 20 s
    .venv/bin/python bench/retention.py --rows 100000 --secs 5 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import BENCH_SECRET_KEY, percentile, prepare_database  # noqa: E402
from scheduler.maintenance import MaintenanceContext, MaintenanceLoop, PeriodicTask, prune_task  # noqa: E402
from shared.apikeys import Principal  # noqa: E402
from shared.clock import utcnow  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db.engine import make_engine, make_session_factory  # noqa: E402
from shared.db.models import Job, Run  # noqa: E402
from shared.egress.addresses import AddressPolicy  # noqa: E402
from shared.jobs.lifecycle import create_job  # noqa: E402
from shared.messages.broker import make_broker  # noqa: E402
from shared.runs.commit import commit_and_apply  # noqa: E402
from shared.runs.effects import Effects  # noqa: E402
from shared.runs.retention import PRUNE_BATCH  # noqa: E402
from shared.triggers.manual import trigger_run  # noqa: E402

SEED = """
INSERT INTO runs (id, job_id, project_id, status, attempt, payload, payload_hash, metadata, triggered_by, priority,
                  job_version, job_version_id, retry_backoff, retry_initial_delay_secs, retry_max_delay_secs,
                  debug_mode, lineage_depth, tags, created_by, created_at, started_at, finished_at)
SELECT gen_random_uuid()::text, j.id, j.project_id, 'completed', 1, '{}', repeat('0', 64), '{}', 'manual', 0,
       j.version, j.version_id, 'exponential', 0, 0, false, 0, '{}', 'apikey:bench', :old, :old, :old
FROM generate_series(1, :n) AS g JOIN jobs j ON j.slug = 'old-' || (g % :jobs)
"""
SEED_EVENTS = """
INSERT INTO run_events (run_id, created_at, id, type, message, data)
SELECT id, :old, gen_random_uuid()::text, 'state_change', NULL, '{"from": "executing", "to": "completed"}'
FROM runs WHERE finished_at = :old
"""
SEED_DELIVERIES = """
INSERT INTO webhook_deliveries (id, run_id, job_id, event_type, url, body, state, attempts, next_attempt_at,
                                last_error, created_at, updated_at)
SELECT gen_random_uuid()::text, id, job_id, 'run.completed', 'http://hook.test/', '{}', 'delivered', 1, :old, NULL,
       :old, :old FROM runs WHERE finished_at = :old
"""


@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)
    secs: float = 0.0
    pruned: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.secs if self.secs else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dsn = prepare_database(args.pg_admin_url, args.db_name)
        self.settings = Settings.from_env({"DATABASE_URL": self.dsn,
                                           "SLUICE_SECRET_KEY": BENCH_SECRET_KEY}).with_overrides(
            redis_url=args.redis_url,
                                                             allow_private_endpoints=True, retention_days=30)
        self.engine = make_engine(self.dsn, pool_size=args.clients + 4)
        self.factory = make_session_factory(self.engine)
        self.redis = redis.Redis.from_url(args.redis_url)
        self.broker = make_broker(self.settings, client=self.redis)
        self.principal = Principal("bench", "proj-bench", frozenset({"*"}))
        with self.factory() as s:
            for i in range(args.jobs):
                create_job(s, self.principal, {"name": f"old {i}", "slug": f"old-{i}",
                                               "endpoint_url": "http://127.0.0.1:9/"}, now=utcnow(),
                           policy=AddressPolicy(allow_private=True), box=self.settings.secret_box)
            record = create_job(s, self.principal, {"name": "live", "slug": "live",
                                                    "endpoint_url": "http://127.0.0.1:9/"}, now=utcnow(),
                                policy=AddressPolicy(allow_private=True), box=self.settings.secret_box)
            s.commit()
            self.live = s.get(Job, record["id"])

    def seed(self) -> None:
        old = utcnow().replace(microsecond=0).replace(year=utcnow().year - 1)
        started = time.monotonic()
        with self.engine.begin() as conn:
            for sql in (SEED, SEED_EVENTS, SEED_DELIVERIES):
                conn.execute(sa.text(sql), {"old": old, "n": self.args.rows, "jobs": self.args.jobs})
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        print(f"seeded {self.args.rows} runs (+ events, deliveries) in {time.monotonic() - started:.0f} s",
              file=sys.stderr)

    def old_runs(self) -> int:
        with self.factory() as s:
            return int(s.scalar(sa.select(sa.func.count()).select_from(Run).where(Run.job_id != self.live.id)) or 0)

    def trigger_for(self, secs: float, phase: Phase) -> None:
        assert self.live is not None
        stop_at = time.monotonic() + secs
        lock = threading.Lock()

        def client() -> None:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                with self.factory() as s:
                    effects = Effects()
                    trigger_run(s, self.live, {"n": 1}, actor="apikey:bench", now=utcnow(), effects=effects)
                    commit_and_apply(s, effects, self.broker)
                with lock:
                    phase.latencies_ms.append((time.perf_counter() - t0) * 1000)

        threads = [threading.Thread(target=client) for _ in range(self.args.clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        phase.secs = time.monotonic() - started
        self.redis.flushdb()  # nothing consumes the messages

    def run_phase(self, pruning: bool) -> Phase:
        phase = Phase()
        if not pruning:
            self.trigger_for(self.args.secs, phase)
            return phase
        ctx = MaintenanceContext(settings=self.settings, session_factory=self.factory, broker=self.broker,
                                 redis=self.redis)
        loop = MaintenanceLoop(ctx, [PeriodicTask("prune_retention", 10.0, prune_task, PRUNE_BATCH)])
        stop = threading.Event()
        before = self.old_runs()
        thread = threading.Thread(target=loop.run, args=(stop,))
        thread.start()
        try:
            self.trigger_for(self.args.secs, phase)
        finally:
            stop.set()
            thread.join(60)
        phase.pruned = before - self.old_runs()
        return phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--secs", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_fairness_bench_retention")
    parser.add_argument("--redis-url", default=os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    args = parser.parse_args(argv)
    bench = Bench(args)
    bench.seed()
    quiet: list[Phase] = []
    busy: list[Phase] = []
    for _ in range(args.rounds):
        quiet.append(bench.run_phase(pruning=False))
        busy.append(bench.run_phase(pruning=True))
    bench.engine.dispose()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"{args.rows} old runs over {args.jobs} jobs; {args.clients} trigger clients; {args.rounds} × {args.secs} s")
    print("| phase | triggers/s | p50 ms | p99 ms | rows pruned/s |")
    print("|---|---|---|---|---|")
    for label, phases in (("without pruning", quiet), ("while pruning", busy)):
        print(f"| {label} | {med([p.rate for p in phases]):.0f} | "
              f"{med([percentile(p.latencies_ms, 50) for p in phases]):.1f} | "
              f"{med([percentile(p.latencies_ms, 99) for p in phases]):.1f} | "
              f"{med([p.pruned / p.secs for p in phases]) if label == 'while pruning' else 0:.0f} |")
    ratio = med([percentile(p.latencies_ms, 99) for p in busy]) / med([percentile(p.latencies_ms, 99) for p in quiet])
    print(f"p99 while pruning / without: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
