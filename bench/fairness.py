"""Fairness benchmark: project A floods slow runs, project B triggers a few; how long B's runs wait.

Against one ``sluice worker`` (``--processes`` × ``--threads``) and two sinks (A's answers after
``--slow-secs``, B's at once), each scenario on a freshly migrated database:

* **B alone**: B triggers ``--b-runs`` runs, one every ``--b-every`` seconds, into an idle fleet;
* **A alone**: A bulk-creates ``--a-runs`` runs; A's throughput (completions/s) over ``--window`` seconds;
* **shared**: A's flood first, then (once every worker thread is busy with A) B's trickle as above; B's
  waits and A's throughput over the same window.

B's wait is ``started_at - created_at`` of each B run, from the database. With fair share B waits about one
of A's attempts at most (``--slow-secs``) even behind A's backlog; without it (FIFO), B waits for A's
backlog ahead of it. ``--before DIR`` runs the same scenarios against another checkout (its own
``.venv``, its migrations and its worker) for comparison, e.g. the tree before fair share.

    .venv/bin/python bench/fairness.py                        # this tree
    .venv/bin/python bench/fairness.py --before ../main-tree  # and another, side by side
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import BENCH_SECRET_KEY, SinkProcess, percentile, prepare_database, prepare_database_empty  # noqa: E402
from shared.apikeys import Principal  # noqa: E402
from shared.clock import utcnow  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db.engine import make_engine, make_session_factory  # noqa: E402
from shared.db.models import Job, Run  # noqa: E402
from shared.egress.addresses import AddressPolicy  # noqa: E402
from shared.jobs.lifecycle import create_job  # noqa: E402
from shared.messages.broker import make_broker  # noqa: E402
from shared.messages.enqueue import enqueue_runs  # noqa: E402
from shared.runs.commit import commit_and_apply  # noqa: E402
from shared.runs.creation import RunInputs, create_runs  # noqa: E402
from shared.runs.effects import Effects  # noqa: E402
from shared.triggers.manual import trigger_run  # noqa: E402


@dataclass
class Outcome:
    b_waits: list[float]
    a_rate: float


class Fleet:
    """A migrated database, a Redis DB and one ``sluice worker`` of a given tree."""

    def __init__(self, args: argparse.Namespace, tree: Path) -> None:
        self.args = args
        self.tree = tree
        admin = args.pg_admin_url
        if tree == ROOT:
            self.dsn = prepare_database(admin, args.db_name)
        else:  # the other tree's own migrations
            self.dsn = prepare_database_empty(admin, args.db_name)
            subprocess.run([str(tree / ".venv" / "bin" / "sluice"), "db", "upgrade"], check=True,
                           env={**os.environ, "DATABASE_URL": self.dsn})
        self.settings = Settings.from_env({"DATABASE_URL": self.dsn, "SLUICE_SECRET_KEY": BENCH_SECRET_KEY}
                                          ).with_overrides(redis_url=args.redis_url, allow_private_endpoints=True)
        self.engine = make_engine(self.dsn, pool_size=4)
        self.factory = make_session_factory(self.engine)
        self.broker = make_broker(self.settings)
        self.broker.client.flushdb()
        env = {**os.environ, "DATABASE_URL": self.dsn, "REDIS_URL": args.redis_url,
               "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true", "SLUICE_SECRET_KEY": BENCH_SECRET_KEY,
               "SLUICE_LOG_LEVEL": os.environ.get("SLUICE_BENCH_LOG_LEVEL", "WARNING")}
        self.proc = subprocess.Popen([str(tree / ".venv" / "bin" / "sluice"), "worker", "--processes",
                                      str(args.processes), "--threads", str(args.threads), "--queues", "sluice.runs"],
                                     env=env, start_new_session=True)

    def job(self, project: str, url: str) -> Job:
        with self.factory() as s:
            record = create_job(s, Principal("bench", project, frozenset({"*"})),
                                {"name": project, "slug": f"{project}-{time.time_ns()}", "endpoint_url": url,
                                 "timeout_secs": 600, "max_attempts": 1}, now=utcnow(),
                                policy=AddressPolicy(allow_private=True), box=self.settings.secret_box)
            s.commit()
            job = s.get(Job, record["id"])
            assert job is not None
            return job

    def flood(self, job: Job, n: int) -> None:
        with self.factory() as s:
            effects = Effects()
            create_runs(s, job, [RunInputs(created_by="apikey:bench") for _ in range(n)], now=utcnow(),
                        effects=effects)
            s.commit()
        enqueue_runs(self.broker, effects.enqueue)

    def trigger(self, job: Job) -> str:
        with self.factory() as s:
            effects = Effects()
            outcome = trigger_run(s, job, {}, actor="apikey:bench", now=utcnow(), effects=effects)
            commit_and_apply(s, effects, self.broker)
            return str(outcome.run.id)

    def count(self, job: Job, status: str) -> int:
        with self.factory() as s:
            return int(s.scalar(sa.select(sa.func.count()).where(Run.job_id == job.id, Run.status == status)) or 0)

    def waits(self, run_ids: list[str], timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while True:
            with self.factory() as s:
                rows = s.execute(sa.select(Run.created_at, Run.started_at).where(Run.id.in_(run_ids))).all()
            started = [(c, st) for c, st in rows if st is not None]
            if len(started) == len(run_ids) or time.monotonic() > deadline:
                return [(st - c).total_seconds() for c, st in started] + [float("inf")] * (len(run_ids) - len(started))
            time.sleep(0.2)

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.engine.dispose()


def trickle(fleet: Fleet, job: Job, args: argparse.Namespace) -> list[str]:
    ids = []
    for _ in range(args.b_runs):
        ids.append(fleet.trigger(job))
        time.sleep(args.b_every)
    return ids


def scenario(args: argparse.Namespace, tree: Path, slow: SinkProcess, fast: SinkProcess, *, a: bool,
             b: bool) -> Outcome:
    fleet = Fleet(args, tree)
    try:
        job_a, job_b = fleet.job("proj-a", slow.url), fleet.job("proj-b", fast.url)
        time.sleep(2)  # workers up
        if a:
            fleet.flood(job_a, args.a_runs)
            deadline = time.monotonic() + 30
            while fleet.count(job_a, "executing") < args.processes * args.threads and time.monotonic() < deadline:
                time.sleep(0.1)
        done_before, started = fleet.count(job_a, "completed"), time.monotonic()
        waits = fleet.waits(trickle(fleet, job_b, args), timeout=args.window + args.slow_secs * 4) if b else []
        time.sleep(max(0.0, args.window - (time.monotonic() - started)))
        rate = (fleet.count(job_a, "completed") - done_before) / (time.monotonic() - started) if a else float("nan")
        return Outcome(waits, rate)
    finally:
        fleet.close()


def fmt(values: list[float], pct: float) -> str:
    if not values:
        return "-"
    value = percentile(values, pct)
    return "never" if value == float("inf") else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-runs", type=int, default=1000, help="A's flood of slow runs")
    parser.add_argument("--slow-secs", type=float, default=2.0, help="how long A's endpoint takes")
    parser.add_argument("--b-runs", type=int, default=10)
    parser.add_argument("--b-every", type=float, default=0.5)
    parser.add_argument("--window", type=float, default=20.0, help="seconds A's throughput is measured over")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--before", type=Path, help="another checkout (with .venv) to compare")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_fairness_bench")
    parser.add_argument("--redis-url", default=os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    args = parser.parse_args(argv)
    trees = [("this tree", ROOT)] + ([("--before", args.before.resolve())] if args.before else [])
    slow, fast = SinkProcess(delay_secs=args.slow_secs), SinkProcess()
    rows = []
    try:
        for label, tree in trees:
            alone_b = scenario(args, tree, slow, fast, a=False, b=True)
            alone_a = scenario(args, tree, slow, fast, a=True, b=False)
            shared = scenario(args, tree, slow, fast, a=True, b=True)
            rows.append((label, alone_b, alone_a, shared))
    finally:
        slow.stop()
        fast.stop()
    print(f"A: {args.a_runs} runs × {args.slow_secs} s; B: {args.b_runs} runs every {args.b_every} s; "
          f"fleet {args.processes}×{args.threads} threads; window {args.window} s")
    print("| tree | B wait p50 alone (s) | B wait p50 shared (s) | B wait max shared (s) | "
          "A runs/s alone | A runs/s shared | A shared/alone |")
    print("|---|---|---|---|---|---|---|")
    for label, alone_b, alone_a, shared in rows:
        ratio = shared.a_rate / alone_a.a_rate if alone_a.a_rate else float("nan")
        print(f"| {label} | {fmt(alone_b.b_waits, 50)} | {fmt(shared.b_waits, 50)} | {fmt(shared.b_waits, 100)} | "
              f"{alone_a.a_rate:.2f} | {shared.a_rate:.2f} | {ratio:.2f} |")
    print(f"B's wait target with fair share: ≤ about one of A's attempts ({args.slow_secs} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
