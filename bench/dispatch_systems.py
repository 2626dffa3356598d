"""The two systems ``bench/dispatch.py`` compares: Sluice's worker fleet and the bare dramatiq reference.

Each starts its workers, seeds queued runs (committed first, messages enqueued by the returned function),
triggers one run, and reads back how many finished, when the last did, and duplicate starts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import sqlalchemy as sa

from bench import reference_worker
from bench.support import SinkProcess
from shared.apikeys import Principal
from shared.clock import utcnow
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.db.models import Job, Run
from shared.egress.addresses import AddressPolicy
from shared.jobs.lifecycle import create_job
from shared.messages.broker import make_broker
from shared.messages.enqueue import enqueue_many, enqueue_runs
from shared.runs.commit import commit_and_apply
from shared.runs.creation import RunInputs, create_runs
from shared.runs.effects import Effects
from shared.runs.status import TERMINAL
from shared.triggers.manual import trigger_run

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SLUICE = str(Path(PYTHON).parent / "sluice")
CHUNK = 2000
TERMINAL_VALUES = [s.value for s in TERMINAL]


class System:
    """One side of the comparison. Subclasses start workers, seed runs and trigger one run."""

    name = ""

    def __init__(self, args: argparse.Namespace, sink: SinkProcess) -> None:
        self.args = args
        self.sink = sink
        self.proc: subprocess.Popen[bytes] | None = None

    def start_workers(self) -> None: ...
    def new_batch(self, projects: int = 1) -> None: ...
    def seed(self, n: int) -> Callable[[], None]: ...
    def trigger(self) -> str: ...
    def terminal_count(self) -> int: ...
    def last_finish(self) -> float: ...
    def not_completed(self) -> int: ...
    def duplicate_starts(self) -> int: return 0

    def stop_workers(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def wait_terminal(self, n: int, timeout: float = 600, *, calls_first: bool = False) -> None:
        """Until ``n`` runs of the batch are finished; with ``calls_first``, first until the sink saw ``n`` calls."""
        deadline = time.monotonic() + timeout
        if calls_first:
            self.sink.wait_for(n, deadline)
        while self.terminal_count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: only {self.terminal_count()} of {n} runs finished")
            time.sleep(0.1)


def _spread(total: int, parts: int) -> list[int]:
    """``total`` shared out as evenly as possible over ``parts``."""
    return [total // parts + (index < total % parts) for index in range(parts)]


class Sluice(System):
    name = "sluice"

    def __init__(self, args: argparse.Namespace, sink: SinkProcess) -> None:
        super().__init__(args, sink)
        self.settings = Settings.from_env({"DATABASE_URL": args.dsn,
                                           "SLUICE_SECRET_KEY": os.environ["SLUICE_SECRET_KEY"]}).with_overrides(
            redis_url=args.redis_url, allow_private_endpoints=True)
        self.engine = make_engine(args.dsn, pool_size=4)
        self.factory = make_session_factory(self.engine)
        self.broker = make_broker(self.settings)
        self.jobs: list[Job] = []

    @property
    def job(self) -> Job:
        return self.jobs[0]

    def start_workers(self) -> None:
        env = {**os.environ, "DATABASE_URL": self.args.dsn, "REDIS_URL": self.args.redis_url,
               "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
               "SLUICE_LOG_LEVEL": os.environ.get("SLUICE_BENCH_LOG_LEVEL", "WARNING")}
        # Sluice's idle workers block until woken; --idle-poll-ms only sets their fallback look (default 5 s).
        poll = ["--idle-poll-ms", str(self.args.sluice_idle_poll_ms)] if self.args.sluice_idle_poll_ms else []
        self.proc = subprocess.Popen([SLUICE, "worker", "--processes", str(self.args.processes), "--threads",
                                      str(self.args.threads), *poll, "--queues", "sluice.runs"], env=env,
                                     start_new_session=True)

    def new_batch(self, projects: int = 1) -> None:
        """A job for the batch's runs; with ``projects``, one job in each of that many projects."""
        stamp = time.time_ns()
        with self.factory() as s:
            ids = [create_job(s, Principal("bench", "bench" if projects == 1 else f"bench-{i}", frozenset({"*"})),
                              {"name": "bench", "slug": f"bench-{stamp}-{i}", "endpoint_url": self.sink.url},
                              now=utcnow(), policy=AddressPolicy(allow_private=True),
                              box=self.settings.secret_box)["id"] for i in range(projects)]
            s.commit()
            self.jobs = [s.get(Job, job_id) for job_id in ids]  # type: ignore[misc]

    def seed(self, n: int) -> Callable[[], None]:
        """``n`` queued runs shared out over the batch's jobs, their messages interleaved (job 1, job 2, …,
        job 1, …); with ``--flood F`` the first job has ``F × n`` of them, all their messages first."""
        per_job: list[list[str]] = []
        flood = round(n * self.args.flood) if len(self.jobs) > 1 else 0
        counts = [flood, *_spread(n - flood, len(self.jobs) - 1)] if flood else _spread(n, len(self.jobs))
        with self.factory() as s:
            for job, count in zip(self.jobs, counts, strict=True):
                per_job.append([])
                for start in range(0, count, CHUNK):
                    effects = Effects()
                    inputs = [RunInputs(created_by="apikey:bench") for _ in range(min(CHUNK, count - start))]
                    create_runs(s, job, inputs, now=utcnow(), effects=effects)
                    per_job[-1].extend(effects.enqueue)
            s.commit()
        flooded, per_job = (per_job[0], per_job[1:]) if flood else ([], per_job)
        ids = flooded + [run_id for row in itertools.zip_longest(*per_job) for run_id in row if run_id is not None]

        def go() -> None:
            for start in range(0, len(ids), CHUNK):
                enqueue_runs(self.broker, ids[start:start + CHUNK])
        return go

    def trigger(self) -> str:
        with self.factory() as s:
            effects = Effects()
            outcome = trigger_run(s, self.job, {}, actor="apikey:bench", now=utcnow(), effects=effects)
            commit_and_apply(s, effects, self.broker)
            return str(outcome.run.id)

    def _scalar(self, query: sa.Select[Any]) -> Any:
        with self.factory() as s:
            return s.execute(query).scalar()

    def _of_batch(self) -> sa.ColumnElement[bool]:
        return Run.job_id.in_([job.id for job in self.jobs])

    def terminal_count(self) -> int:
        return int(self._scalar(sa.select(sa.func.count()).where(self._of_batch(),
                                                                 Run.status.in_(TERMINAL_VALUES))))

    def last_finish(self) -> float:
        return float(self._scalar(sa.select(sa.func.max(Run.finished_at)).where(self._of_batch())).timestamp())

    def not_completed(self) -> int:
        return int(self._scalar(sa.select(sa.func.count()).where(self._of_batch(), Run.status != "completed")))

    def duplicate_starts(self) -> int:
        with self.factory() as s:
            return int(s.execute(sa.text(
                "SELECT count(*) FROM (SELECT e.run_id FROM run_events e JOIN runs r ON r.id = e.run_id "
                "WHERE r.job_id = ANY(:jobs) AND e.type = 'attempt_started' GROUP BY e.run_id, e.data->>'attempt' "
                "HAVING count(*) > 1) d"), {"jobs": [job.id for job in self.jobs]}).scalar())


class Reference(System):
    name = "reference"

    def __init__(self, args: argparse.Namespace, sink: SinkProcess) -> None:
        super().__init__(args, sink)
        self.conn = psycopg2.connect(args.dsn)
        with self.conn.cursor() as cur:
            cur.execute(reference_worker.SCHEMA)
        self.conn.commit()
        self.broker = reference_worker.make_broker(args.redis_url)
        self.batch = ""

    def start_workers(self) -> None:
        self.proc = subprocess.Popen([PYTHON, str(ROOT / "bench" / "reference_worker.py"), "--dsn", self.args.dsn,
                                      "--redis-url", self.args.redis_url, "--processes", str(self.args.processes),
                                      "--threads", str(self.args.threads), "--idle-poll-ms",
                                      str(self.args.idle_poll_ms)], start_new_session=True)

    def new_batch(self, projects: int = 1) -> None:  # the reference has no projects
        self.batch = f"b{time.time_ns()}-"

    def _ids(self, n: int) -> list[str]:
        base = time.time_ns()
        return [f"{self.batch}{base}-{i}" for i in range(n)]

    def seed(self, n: int) -> Callable[[], None]:
        ids = self._ids(n)
        with self.conn.cursor() as cur:
            psycopg2.extras.execute_values(cur, "INSERT INTO bench_reference_runs (id, status, url) VALUES %s",
                                           [(i, "queued", self.sink.url) for i in ids], page_size=CHUNK)
        self.conn.commit()

        def go() -> None:
            for start in range(0, len(ids), CHUNK):
                enqueue_many(self.broker, reference_worker.QUEUE, reference_worker.ACTOR, ids[start:start + CHUNK])
        return go

    def trigger(self) -> str:
        run_id = self._ids(1)[0]
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO bench_reference_runs (id, status, url) VALUES (%s, 'queued', %s)",
                        (run_id, self.sink.url))
        self.conn.commit()
        enqueue_many(self.broker, reference_worker.QUEUE, reference_worker.ACTOR, [run_id])
        return run_id

    def _scalar(self, sql: str) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, (self.batch + "%",))
            value = cur.fetchone()[0]  # type: ignore[index]
        self.conn.commit()
        return value

    def terminal_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM bench_reference_runs WHERE id LIKE %s AND status = 'completed'"))

    def last_finish(self) -> float:
        return float(self._scalar("SELECT max(finished_at) FROM bench_reference_runs WHERE id LIKE %s").timestamp())

    def not_completed(self) -> int:
        return int(self._scalar("SELECT count(*) FROM bench_reference_runs WHERE id LIKE %s AND status <> 'completed'"))
