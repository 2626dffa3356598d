"""Flow-control benchmark: the cost of limit checks, and how exactly limits hold, on a real worker fleet.

``sluice worker --processes 2`` against the fast local sink (``bench/sink.py``), the scheduler's
maintenance loop in a thread (delayed promotion), real PostgreSQL and Redis.

* **overhead**: drain runs/s of ``--runs`` queued runs of a job without limits vs a job whose limits are
  checked but never bind (``max_concurrency`` 10 000, ``rate_limit_max`` 100 000 per 1 s), alternating
  rounds, medians; target: limited ≤ 10 % slower.
* **accuracy**: for each case, the most concurrent calls seen at the sink (interval = arrival + the sink's
  ``--delay-secs``) vs the cap and the utilisation (busy slot-time / (cap × span)); for rate limits the most
  admitted starts in any window, from the limiter's own start log in Redis (ZSET marks, server clock, polled
  every 0.2 s) vs the limit, the most calls in any window as the sink saw them, and the fraction of the
  allowed rate achieved.

``python bench/limits.py`` (20 000 runs × 3 rounds each) or ``--runs 2000 --rounds 1`` for a smoke check.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.interval_stats import achieved_rate_fraction, max_overlap, max_starts_in_window, utilisation  # noqa: E402
from bench.support import (  # noqa: E402
    BENCH_SECRET_KEY,
    SinkProcess,
    cpu_secs_of_database_backends,
    cpu_secs_of_group,
    prepare_database,
)
from scheduler.maintenance import MaintenanceContext, MaintenanceLoop  # noqa: E402
from shared import redis_keys  # noqa: E402
from shared.apikeys import Principal  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db.engine import make_engine, make_session_factory  # noqa: E402
from shared.db.models import Job, Run  # noqa: E402
from shared.egress.addresses import AddressPolicy  # noqa: E402
from shared.jobs.lifecycle import create_job  # noqa: E402
from shared.messages.broker import make_broker  # noqa: E402
from shared.runs.creation import RunInputs, create_runs  # noqa: E402
from shared.runs.effects import Effects, apply_after_commit  # noqa: E402
from shared.runs.status import TERMINAL  # noqa: E402

PYTHON = sys.executable
SLUICE = str(Path(PYTHON).parent / "sluice")
CHUNK = 2000
TERMINAL_VALUES = [s.value for s in TERMINAL]
NEVER_BINDING = {"max_concurrency": 10_000, "rate_limit_max": 100_000, "rate_limit_window_secs": 1}




class Bench:
    """Database, broker, worker fleet and maintenance loop shared by every measurement."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.from_env({"DATABASE_URL": args.dsn,
                                           "SLUICE_SECRET_KEY": os.environ["SLUICE_SECRET_KEY"]}).with_overrides(
            redis_url=args.redis_url, allow_private_endpoints=True,
                                                           log_json=False)
        self.engine = make_engine(args.dsn, pool_size=4)
        self.factory = make_session_factory(self.engine)
        self.redis = redis.Redis.from_url(args.redis_url)
        self.broker = make_broker(self.settings)
        self.stop_maintenance = threading.Event()
        loop = MaintenanceLoop(MaintenanceContext(settings=self.settings, session_factory=self.factory,
                                                  broker=self.broker, redis=redis.Redis.from_url(args.redis_url)))
        self.maintenance = threading.Thread(target=loop.run, args=(self.stop_maintenance,), daemon=True)
        env = {**os.environ, "DATABASE_URL": args.dsn, "REDIS_URL": args.redis_url,
               "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true", "SLUICE_METRICS_PORT": "0",
               "SLUICE_LOG_LEVEL": os.environ.get("SLUICE_BENCH_LOG_LEVEL", "WARNING")}
        self.workers = subprocess.Popen([SLUICE, "worker", "--processes", str(args.processes), "--threads",
                                         str(args.threads), "--queues", "sluice.runs"], env=env,
                                        start_new_session=True)
        self.maintenance.start()

    def close(self) -> None:
        self.stop_maintenance.set()
        self.workers.send_signal(signal.SIGTERM)
        try:
            self.workers.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.workers.pid, signal.SIGKILL)
            self.workers.wait(10)
        self.maintenance.join(10)
        self.engine.dispose()

    def new_job(self, url: str, **fields: Any) -> Job:
        with self.factory() as s:
            record = create_job(s, Principal("bench", "bench", frozenset({"*"})),
                                {"name": "bench", "slug": f"limits-{time.time_ns()}", "endpoint_url": url, **fields},
                                now=datetime.now(UTC), policy=AddressPolicy(allow_private=True),
                                box=self.settings.secret_box)
            s.commit()
            job = s.get(Job, record["id"])
            assert job is not None
            s.expunge(job)
            return job

    def seed(self, job: Job, inputs: list[RunInputs]) -> Callable[[], None]:
        """Commit the runs now; the returned function enqueues their messages (the timed part)."""
        effects = Effects()
        with self.factory() as s:
            live = s.get(Job, job.id)
            assert live is not None
            for start in range(0, len(inputs), CHUNK):
                create_runs(s, live, inputs[start:start + CHUNK], now=datetime.now(UTC), effects=effects)
            s.commit()
        return lambda: apply_after_commit(effects, self.broker)

    def wait_terminal(self, job: Job, n: int, timeout: float = 900, *, sink: SinkProcess | None = None) -> float:
        """Wait until ``n`` runs of ``job`` are terminal (with ``sink``, first until it saw ``n`` calls); return
        the last ``finished_at`` (unix seconds)."""
        deadline = time.monotonic() + timeout
        if sink is not None:
            sink.wait_for(n, deadline)
        while True:
            with self.factory() as s:
                done, last = s.execute(sa.select(sa.func.count(), sa.func.max(Run.finished_at)).where(
                    Run.job_id == job.id, Run.status.in_(TERMINAL_VALUES))).one()
            if done >= n:
                return float(last.timestamp())
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {n} runs finished")
            time.sleep(0.1)

    def attempts(self, job: Job) -> tuple[int, int]:
        """``(runs not completed on attempt 1, attempt_started events beyond one per run)``."""
        with self.factory() as s:
            bad = s.scalar(sa.select(sa.func.count()).select_from(Run).where(
                Run.job_id == job.id, sa.or_(Run.status != "completed", Run.attempt != 1))) or 0
            extra = s.execute(sa.text(
                "SELECT count(*) - count(DISTINCT e.run_id) FROM run_events e JOIN runs r ON r.id = e.run_id "
                "WHERE r.job_id = :job AND e.type = 'attempt_started'"), {"job": job.id}).scalar() or 0
        return int(bad), int(extra)


# ---------------------------------------------------------------------------------------------- overhead

@dataclass
class Drain:
    """One overhead round: drain rate, and CPU ms per run of the workers, PostgreSQL and Redis."""

    rps: float
    worker_ms: float
    db_ms: float
    redis_ms: float


def _cpu(bench: Bench) -> tuple[float, float, float]:
    used = bench.redis.info("cpu")
    return (cpu_secs_of_group(bench.workers.pid), cpu_secs_of_database_backends(bench.args.db_name),
            float(used["used_cpu_user"]) + float(used["used_cpu_sys"]))


def drain(bench: Bench, sink: SinkProcess, fields: dict[str, Any], n: int) -> Drain:
    job = bench.new_job(sink.url, **fields)
    go = bench.seed(job, [RunInputs(created_by="apikey:bench") for _ in range(n)])
    before = _cpu(bench)
    started = time.time()
    go()
    last = bench.wait_terminal(job, n, sink=sink)
    after = _cpu(bench)
    sink.records()
    bad, extra = bench.attempts(job)
    if bad or extra:
        raise RuntimeError(f"{bad} runs not completed on attempt 1, {extra} extra attempt starts")
    worker, db, redis_cpu = ((b - a) * 1000 / n for a, b in zip(before, after, strict=True))
    return Drain(n / (last - started), worker, db, redis_cpu)


def overhead(bench: Bench, args: argparse.Namespace) -> tuple[list[Drain], list[Drain]]:
    sink = SinkProcess()
    plain: list[Drain] = []
    limited: list[Drain] = []
    try:
        drain(bench, sink, {}, min(500, args.runs))  # warm-up: workers connected, caches filled
        for round_no in range(args.rounds):
            order = [("plain", {}), ("limited", NEVER_BINDING)]
            if round_no % 2:
                order.reverse()  # alternate which side goes first, so drift over time hits both
            for name, fields in order:
                result = drain(bench, sink, fields, args.runs)
                (plain if name == "plain" else limited).append(result)
                print(f"  round {round_no + 1} {name}: {result.rps:,.0f} runs/s, CPU ms/run worker "
                      f"{result.worker_ms:.2f} db {result.db_ms:.2f} redis {result.redis_ms:.2f}", flush=True)
    finally:
        sink.stop()
    return plain, limited


# ---------------------------------------------------------------------------------------------- accuracy

class MarkLog:
    """Polls rate-limit ZSETs: every admitted start's mark (kept ≥ one window) on the Redis clock."""

    def __init__(self, client: redis.Redis, keys: list[str]) -> None:
        self.seen: dict[str, dict[bytes, float]] = {k: {} for k in keys}
        self.client = client
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.wait(0.2):
            self._snapshot()

    def _snapshot(self) -> None:
        for key, seen in self.seen.items():
            seen.update({m: s / 1000 for m, s in self.client.zrange(key, 0, -1, withscores=True)})

    def stop(self) -> dict[str, list[float]]:
        self.done.set()
        self.thread.join(5)
        self._snapshot()
        return {k: sorted(v.values()) for k, v in self.seen.items()}


@dataclass
class Row:
    case: str
    limit: str
    observed: str
    sink_view: str
    efficiency: float
    seconds: float
    attempts_ok: bool


def accuracy(bench: Bench, args: argparse.Namespace) -> list[Row]:
    sink = SinkProcess(delay_secs=args.call_secs)
    rows: list[Row] = []
    try:
        rows.append(concurrency_case(bench, sink, "max_concurrency", {"max_concurrency": 3},
                                     [RunInputs(created_by="b") for _ in range(args.backlog)], 3, None))
        keyed = [RunInputs(created_by="b", concurrency_key=f"k{i % 5}") for i in range(5 * args.per_key_runs)]
        rows.append(concurrency_case(bench, sink, "max_concurrency_per_key (5 keys)",
                                     {"max_concurrency_per_key": 1}, keyed, 1, 5))
        rows.append(rate_case(bench, sink, "rate_limit (job)", {"rate_limit_max": 20, "rate_limit_window_secs": 2},
                              {"job": args.rate_runs}))
        rows.append(rate_case(bench, sink, "rate_limit_keys customer (3)",
                              {"rate_limit_keys": [{"name": "customer", "max": 20, "window_secs": 2}]},
                              # whole windows per customer: a partial last window understates the fraction
                              {c: 60 for c in ("acme", "globex", "initech")}))
    finally:
        sink.stop()
    return rows


def concurrency_case(bench: Bench, sink: SinkProcess, name: str, fields: dict[str, Any], inputs: list[RunInputs],
                     cap: int, keys: int | None) -> Row:
    job = bench.new_job(sink.url, **fields)
    go = bench.seed(job, inputs)
    sink.records()
    started = time.time()
    go()
    bench.wait_terminal(job, len(inputs))
    records = sink.records()
    with bench.factory() as s:
        rows = s.execute(sa.select(Run.id, Run.concurrency_key).where(Run.job_id == job.id))
        key_of: dict[str, str | None] = {run_id: key for run_id, key in rows}
    groups: dict[str | None, list[tuple[float, float]]] = {}
    for run_id, _, arrived in records:
        groups.setdefault(key_of[run_id] if keys else None, []).append((arrived, arrived + sink.delay_secs))
    worst_overlap = max(max_overlap(iv) for iv in groups.values())
    worst_use = min(utilisation(iv, cap) for iv in groups.values())
    gaps = sorted(g for iv in groups.values() for g in handoff_gaps(iv, cap))
    bad, extra = bench.attempts(job)
    scope = "per key" if keys else "job"
    gap = f", gap {gaps[len(gaps) // 2] * 1000:.0f}/{gaps[len(gaps) * 9 // 10] * 1000:.0f} ms" if gaps else ""
    return Row(name, f"{cap} {scope}", f"max {worst_overlap} concurrent", f"{len(records)} calls{gap}", worst_use,
               time.time() - started, not (bad or extra))


def handoff_gaps(intervals: list[tuple[float, float]], slots: int) -> list[float]:
    """Idle time of a slot between one call leaving the sink and the next arriving (the n-th arrival takes
    the slot the (n - slots)-th departure freed): the slot hand-off's cost, seen from the endpoint."""
    arrivals = sorted(a for a, _ in intervals)
    departures = sorted(d for _, d in intervals)
    return [max(0.0, a - d) for a, d in zip(arrivals[slots:], departures, strict=False)]


def rate_case(bench: Bench, sink: SinkProcess, name: str, fields: dict[str, Any], per_value: dict[str, int]) -> Row:
    job = bench.new_job(sink.url, **fields)
    inputs: list[RunInputs] = []
    keys: dict[str, str] = {}
    for value, n in per_value.items():
        meta = {} if value == "job" else {"customer": value}
        inputs += [RunInputs(created_by="b", metadata=meta) for _ in range(n)]
        keys[value] = redis_keys.rate_job(job.id) if value == "job" else redis_keys.rate_key(job.id, "customer", value)
    log = MarkLog(bench.redis, list(keys.values()))
    go = bench.seed(job, inputs)
    sink.records()
    started = time.time()
    go()
    bench.wait_terminal(job, len(inputs))
    marks = log.stop()
    records = sink.records()
    with bench.factory() as s:
        value_of = {run_id: (meta or {}).get("customer", "job") for run_id, meta in s.execute(
            sa.select(Run.id, Run.run_metadata).where(Run.job_id == job.id)).all()}
    admitted = max(max_starts_in_window(m, 2.0) for m in marks.values())
    at_sink = max(max_starts_in_window([a for rid, _, a in records if value_of[rid] == v], 2.0) for v in per_value)
    fraction = min(achieved_rate_fraction(m, 20, 2.0) for m in marks.values())
    complete = all(len(marks[keys[v]]) == n for v, n in per_value.items())
    bad, extra = bench.attempts(job)
    return Row(name, "20 / 2 s" + (" per value" if len(per_value) > 1 else ""),
               f"max {admitted} starts/2 s" + ("" if complete else " (log incomplete)"),
               f"max {at_sink} calls/2 s", fraction, time.time() - started, not (bad or extra))


# ---------------------------------------------------------------------------------------------- main

def report(plain: list[Drain], limited: list[Drain], rows: list[Row], args: argparse.Namespace) -> None:
    print()
    print(f"runs={args.runs} rounds={args.rounds} processes={args.processes} threads={args.threads} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    if plain and limited:
        print(f"{'drain (median of rounds)':<28}{'no limits':>12}{'limits checked':>16}{'slower by':>12}   target")
        print("-" * 80)
        p, lim = (statistics.median(d.rps for d in side) for side in (plain, limited))
        print(f"{'runs/s':<28}{p:>12,.0f}{lim:>16,.0f}{(p - lim) / p:>12.1%}   ≤ 10 %")
        for label, attr in (("worker CPU ms/run", "worker_ms"), ("db CPU ms/run", "db_ms"),
                            ("redis CPU ms/run", "redis_ms")):
            a, b = (statistics.median(getattr(d, attr) for d in side) for side in (plain, limited))
            print(f"{label:<28}{a:>12.3f}{b:>16.3f}{(b - a) / a if a else 0.0:>+12.1%}")
        pc, lc = (statistics.median(d.worker_ms + d.db_ms + d.redis_ms for d in side) for side in (plain, limited))
        print(f"{'total CPU ms/run':<28}{pc:>12.3f}{lc:>16.3f}{(lc - pc) / pc:>+12.1%}")
        print(f"rounds no limits: {[round(d.rps) for d in plain]}  limits checked: {[round(d.rps) for d in limited]}")
    if rows:
        print()
        print(f"{'case':<34}{'limit':<20}{'limiter (Redis)':<26}{'sink':<34}{'efficiency':>11}{'secs':>7}  attempts=1")
        print("-" * 139)
        for r in rows:
            print(f"{r.case:<34}{r.limit:<20}{r.observed:<26}{r.sink_view:<34}{r.efficiency:>11.1%}"
                  f"{r.seconds:>7.1f}  {'yes' if r.attempts_ok else 'NO'}")
        print("efficiency: concurrency = busy slot-time / (cap × span) (worst key); rate = achieved / allowed rate "
              "(worst value); target ≥ 90 %")
        print("gap: median/p90 idle time of a concurrency slot between a call leaving the sink and the next "
              "arriving (slot hand-off, worker.handoff)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("SLUICE_SECRET_KEY", BENCH_SECRET_KEY)  # processes started here need one
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000, help="runs per overhead round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (alternating)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--backlog", type=int, default=300, help="runs behind max_concurrency 3")
    parser.add_argument("--per-key-runs", type=int, default=20, help="runs per key (5 keys, cap 1 each)")
    parser.add_argument("--rate-runs", type=int, default=100, help="runs behind the 20 / 2 s job rate limit")
    parser.add_argument("--call-secs", type=float, default=0.1, help="sink answer delay in the accuracy cases")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_bench_limits")
    parser.add_argument("--redis-url", default=os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6"))
    args = parser.parse_args(argv)
    args.dsn = prepare_database(args.pg_admin_url, args.db_name)
    redis.Redis.from_url(args.redis_url).flushdb()
    bench = Bench(args)
    plain: list[Drain] = []
    limited: list[Drain] = []
    rows: list[Row] = []
    try:
        if not args.skip_overhead:
            print("overhead ...", flush=True)
            plain, limited = overhead(bench, args)
        if not args.skip_accuracy:
            print("accuracy ...", flush=True)
            rows = accuracy(bench, args)
    finally:
        bench.close()
    report(plain, limited, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
