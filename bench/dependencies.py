"""Dependency release benchmark: what an upstream run's finish costs when its dependent job has many waiting runs.

A pipeline keyed by idempotency key: job ``down`` depends on job ``up``, and each of ``down``'s ``--waiting``
runs waits for the ``up`` run with its own key. Each measured finish moves one executing ``up`` run to
``completed`` as an attempt's outcome does (the terminal move with its dependency hook, then the commit),
which releases the one waiting run with the same key. The table shows the finish's latency, median and
max of ``--finishes``, per number of waiting runs.

With ``--keyless``, no run has a key: the first finish releases every waiting run at once (the max column),
and the later ones find none left.

To compare trees, run this file against another checkout (``--tree``, same venv): it imports that tree's code,
which needs the same job, edge and move functions (a worktree of an earlier commit, e.g. ``git worktree add
/tmp/previous HEAD~1``).

    .venv/bin/python bench/dependencies.py                          # 1,000 / 10,000 / 50,000 waiting
    .venv/bin/python bench/dependencies.py --tree /tmp/previous --waiting 10000
    .venv/bin/python bench/dependencies.py --keyless --finishes 1  # one finish releases them all
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SEED = """
INSERT INTO runs (id, job_id, project_id, status, attempt, payload, payload_hash, metadata, triggered_by, priority,
                  job_version, job_version_id, retry_backoff, retry_initial_delay_secs, retry_max_delay_secs,
                  debug_mode, lineage_depth, tags, created_by, created_at, idempotency_key)
SELECT gen_random_uuid()::text, j.id, j.project_id, :status, :attempt, '{}', repeat('0', 64), '{}', 'manual', 0,
       j.version, j.version_id, 'exponential', 0, 0, false, 0, '{}', 'apikey:bench',
       now() - interval '1 hour' + g * interval '1 microsecond', CASE WHEN :keyed THEN 'key-' || g END
FROM generate_series(1, :n) AS g JOIN jobs j ON j.slug = :slug
"""


def measure(args: argparse.Namespace, waiting: int) -> list[float]:
    import sqlalchemy as sa

    from bench.support import BENCH_SECRET_KEY, prepare_database
    from shared.apikeys import Principal
    from shared.clock import utcnow
    from shared.config import Settings
    from shared.db.engine import make_engine, make_session_factory
    from shared.db.models import Run
    from shared.dependencies.edges import create_edge
    from shared.egress.addresses import AddressPolicy
    from shared.jobs.lifecycle import create_job
    from shared.runs.effects import Effects
    from shared.runs.moves import move
    from shared.runs.status import RunStatus

    url = prepare_database(args.pg_admin_url, args.db_name)
    box = Settings.from_env({"DATABASE_URL": url, "SLUICE_SECRET_KEY": BENCH_SECRET_KEY}).secret_box
    engine = make_engine(url, pool_size=2)
    factory = make_session_factory(engine)
    principal = Principal("bench", "proj-bench", frozenset({"*"}))
    with factory() as s:
        jobs = {slug: create_job(s, principal, {"name": slug, "slug": slug, "endpoint_url": "http://127.0.0.1:9/"},
                                 now=utcnow(), policy=AddressPolicy(allow_private=True), box=box)
                for slug in ("up", "down")}
        create_edge(s, jobs["down"], "up", "completed", now=utcnow())
        keyed = not args.keyless
        s.execute(sa.text(SEED), {"status": "waiting", "attempt": 0, "n": waiting, "slug": "down", "keyed": keyed})
        s.execute(sa.text(SEED), {"status": "executing", "attempt": 1, "n": args.finishes, "slug": "up",
                                  "keyed": keyed})
        s.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    with factory() as s:
        upstream = list(s.scalars(sa.select(Run.id).where(Run.job_id == jobs["up"]["id"])
                                  .order_by(Run.idempotency_key)))
    latencies, released = [], 0
    for run_id in upstream:
        started = time.perf_counter()
        with factory() as s:
            effects = Effects()
            move(s, run_id, RunStatus.COMPLETED, now=utcnow(), effects=effects)
            s.commit()
        latencies.append((time.perf_counter() - started) * 1000)
        released += len(effects.enqueue)
    # Keyed, each finish released its own dependent run; keyless, the first released them all.
    assert released == (waiting if args.keyless else min(waiting, args.finishes)), released
    engine.dispose()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code is measured")
    parser.add_argument("--waiting", default="1000,10000,50000", help="waiting runs of the dependent job, each row")
    parser.add_argument("--finishes", type=int, default=20, help="upstream finishes measured per row")
    parser.add_argument("--keyless", action="store_true", help="runs without keys: one finish releases all")
    parser.add_argument("--db-name", default="sluice_bench_dependencies")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    print(f"tree: {args.tree.resolve()}")
    print(f"{'waiting runs':>14}{'finish p50 ms':>16}{'finish max ms':>16}")
    for waiting in (int(n) for n in args.waiting.split(",")):
        latencies = measure(args, waiting)
        print(f"{waiting:>14,}{statistics.median(latencies):>16.1f}{max(latencies):>16.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
