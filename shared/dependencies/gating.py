"""Job dependencies at run time (CONTRACT §5.14): gate new runs, release waiting ones.

An edge ``job_id → depends_on_job_id`` with a ``condition`` is evaluated on the upstream job's newest
**terminal** run (by ``finished_at``, then ``created_at``, then ``id``) among the runs correlated with the
dependent run: same ``idempotency_key`` if it has one; else same ``metadata.dependency_key`` if it has one;
else any run of the upstream job. A cron run's tick key (``cron:<job>:<tick>``) is not a correlation key:
no upstream run can have it, so a cron run correlates by its dependency key, else on any run. A run is
created ``waiting`` unless every edge holds, and released (``waiting → queued``, or ``delayed`` if
``scheduled_at`` is ahead) once they all do.

No lost wake-ups. Both sides take the transaction-scoped advisory lock ``("deps", <dependent job id>)``:

- creating a run of a job with edges takes it *before* evaluating the edges;
- a terminal transition of an upstream run updates that run, then takes the lock of each dependent job
  *before* reading its ``waiting`` runs, in the same transaction as the terminal update.

Under READ COMMITTED every statement sees what was committed before it started. If the creator gets the
lock first, the finisher waits for the creator's commit and its later read of ``waiting`` runs sees the new
run, so it releases it. If the finisher gets it first, the creator waits for the finisher's commit, and its
edge evaluation sees the terminal upstream run, so the run is not created ``waiting`` at all. Either way
the run ends up released.

Releasing (the moves) is ``shared.runs.moves.release_waiting``'s; this module decides which runs may go.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.locks import lock_key
from shared.db.models import JobDependency, Run
from shared.runs.status import TERMINAL, RunStatus
from shared.schedules.cron import TICK_KEY_PREFIX, is_tick_key

_FAILURES = frozenset({"failed", "timed_out", "crashed", "system_failed", "expired"})
CONDITION_STATUSES: dict[str, frozenset[str]] = {
    "completed": frozenset({"completed"}),
    "failed": _FAILURES,
    "any": frozenset(s.value for s in TERMINAL),
}
_TERMINAL_VALUES = [s.value for s in TERMINAL]
RELEASE_BATCH = 500
# What an upstream run offers a dependent run correlating on a dependency key (``metadata->>'dependency_key'``).
_DEPENDENCY_KEY = Run.run_metadata["dependency_key"].as_string()


@dataclass(frozen=True)
class Correlation:
    """What ties a dependent run to upstream runs: its idempotency key, else its dependency key."""

    idempotency_key: str | None = None
    dependency_key: str | None = None

    @property
    def kind(self) -> str:
        if self.idempotency_key is not None:
            return "idem"
        if self.dependency_key is not None:
            return "dep"
        return "any"

    @property
    def value(self) -> str | None:
        return self.idempotency_key if self.idempotency_key is not None else self.dependency_key


@dataclass(frozen=True)
class Verdict:
    """Outcome of evaluating every edge for one run: ``holds`` and the upstream runs that satisfied it."""

    holds: bool
    dependency_runs: list[str]


def correlation_of(idempotency_key: str | None, metadata: dict[str, str] | None) -> Correlation:
    """What a run with this key and metadata correlates on (a cron tick key is no correlation key)."""
    dependency_key = (metadata or {}).get("dependency_key")
    return Correlation(None if is_tick_key(idempotency_key) else idempotency_key or None,
                       dependency_key if isinstance(dependency_key, str) else None)


def edges_of(session: Session, job_id: str) -> list[JobDependency]:
    return list(session.scalars(sa.select(JobDependency).where(JobDependency.job_id == job_id)
                                .order_by(JobDependency.created_at, JobDependency.id)))


def _newest_terminal(session: Session, upstream_job_id: str, kind: str,
                     values: Sequence[str | None]) -> dict[str | None, tuple[str, str]]:
    """Newest terminal upstream run per correlation value: value -> (run id, status). One query."""
    order = (Run.finished_at.desc(), Run.created_at.desc(), Run.id.desc())
    where = [Run.job_id == upstream_job_id, Run.status.in_(_TERMINAL_VALUES)]
    if kind == "any":
        row = session.execute(sa.select(Run.id, Run.status).where(*where).order_by(*order).limit(1)).first()
        return {None: (row[0], row[1])} if row else {}
    column = Run.idempotency_key if kind == "idem" else _DEPENDENCY_KEY
    ranked = (
        sa.select(Run.id, Run.status, column.label("corr"),
                  sa.func.row_number().over(partition_by=column, order_by=order).label("rn"))
        .where(*where, column.in_([v for v in values if v is not None]))
        .subquery()
    )
    rows = session.execute(sa.select(ranked.c.id, ranked.c.status, ranked.c.corr).where(ranked.c.rn == 1))
    return {corr: (run_id, status) for run_id, status, corr in rows}


def evaluate_many(session: Session, edges: Sequence[JobDependency],
                  correlations: Sequence[Correlation]) -> list[Verdict]:
    """Evaluate ``edges`` for each correlation, in order; a few queries whatever the number of runs."""
    if not edges:
        return [Verdict(True, []) for _ in correlations]
    by_kind: dict[str, list[str | None]] = {}
    for corr in correlations:
        by_kind.setdefault(corr.kind, []).append(corr.value)
    found: dict[tuple[str, str], dict[str | None, tuple[str, str]]] = {}
    for edge in edges:
        for kind, values in by_kind.items():
            found[(edge.id, kind)] = _newest_terminal(session, edge.depends_on_job_id, kind, sorted(
                {v for v in values if v is not None}) if kind != "any" else [None])
    verdicts = []
    for corr in correlations:
        holds, used = True, []
        for edge in edges:
            hit = found[(edge.id, corr.kind)].get(corr.value)
            if hit is None or hit[1] not in CONDITION_STATUSES.get(edge.condition, frozenset()):
                holds = False
                break
            used.append(hit[0])
        verdicts.append(Verdict(holds, used if holds else []))
    return verdicts


def gate_new_runs(session: Session, job_id: str, correlations: Sequence[Correlation], *,
                  has_edges: bool | None = None) -> list[Verdict]:
    """Creation-side gate: lock the job's dependency key (see module doc), then evaluate its edges.

    Jobs without edges take no lock (their runs never wait). ``has_edges=False`` (known from the job
    lookup, same transaction) skips the edges query. Call in the creating transaction.
    """
    edges = edges_of(session, job_id) if has_edges is not False else []
    if not edges:
        return [Verdict(True, []) for _ in correlations]
    lock_key(session, "deps", job_id)
    return evaluate_many(session, edges, correlations)


def release_expiry(run: Run, now: datetime) -> datetime | None:
    """``expires_at`` of a released run: max(release, ``scheduled_at``) + the TTL chosen at creation."""
    if not run.ttl_secs:
        return None
    start = max(now, run.scheduled_at) if run.scheduled_at is not None else now
    return start + timedelta(seconds=run.ttl_secs)


def dependent_jobs(session: Session, upstream_job_id: str) -> list[str]:
    """The jobs with an edge to ``upstream_job_id``, in id order (the order their locks are taken)."""
    return sorted(set(session.scalars(
        sa.select(JobDependency.job_id).where(JobDependency.depends_on_job_id == upstream_job_id))))


@dataclass(frozen=True)
class Finished:
    """The correlation keys of upstream runs that have just become terminal."""

    idempotency_keys: frozenset[str]
    dependency_keys: frozenset[str]


def finished_keys(session: Session, run_ids: Sequence[str]) -> dict[str, Finished]:
    """Per upstream job (in id order: the order dependency locks are taken), the keys of its runs among
    ``run_ids``."""
    rows = session.execute(sa.select(Run.job_id, Run.idempotency_key, _DEPENDENCY_KEY)
                           .where(Run.id.in_(run_ids))).all()
    return {job_id: Finished(frozenset(row[1] for row in rows if row[0] == job_id and row[1] is not None),
                             frozenset(row[2] for row in rows if row[0] == job_id and row[2] is not None))
            for job_id in sorted({row[0] for row in rows})}


def correlating_with(finished: Finished) -> sa.ColumnElement[bool]:
    """Waiting runs that may correlate with one of the ``finished`` runs (``correlation_of``): the same
    idempotency key; else, without a usable one, the same dependency key; else, without either, any.
    Only these can have their verdict changed by those runs: a superset of them, never fewer (the test
    compares it with a full re-evaluation)."""
    no_idempotency_key = sa.or_(Run.idempotency_key.is_(None), Run.idempotency_key == "",
                                Run.idempotency_key.startswith(TICK_KEY_PREFIX, autoescape=True))
    no_dependency_key = sa.func.jsonb_typeof(Run.run_metadata["dependency_key"]).is_distinct_from("string")
    return sa.or_(Run.idempotency_key.in_(sorted(finished.idempotency_keys)),
                  sa.and_(no_idempotency_key, _DEPENDENCY_KEY.in_(sorted(finished.dependency_keys))),
                  sa.and_(no_idempotency_key, no_dependency_key))


def releasable_runs(session: Session, job_id: str,
                    finished: Finished | None = None) -> Iterator[list[tuple[Run, Verdict]]]:
    """``job_id``'s waiting runs whose edges all hold, oldest first, in batches: the caller releases each
    batch before the next is read. With ``finished``, only the runs those upstream runs can release
    (``correlating_with``): a job whose waiting runs each wait for their own upstream run is not read
    whole at every finish. Takes the job's dependency lock first (see the module doc)."""
    lock_key(session, "deps", job_id)
    edges = edges_of(session, job_id)
    after: tuple[datetime, str] | None = None
    while True:
        query = sa.select(Run).where(Run.job_id == job_id, Run.status == RunStatus.WAITING.value)
        if finished is not None:
            query = query.where(correlating_with(finished))
        if after is not None:
            query = query.where(sa.or_(Run.created_at > after[0],
                                       sa.and_(Run.created_at == after[0], Run.id > after[1])))
        waiting = list(session.scalars(query.order_by(Run.created_at, Run.id).limit(RELEASE_BATCH)))
        if not waiting:
            return
        verdicts = evaluate_many(session, edges, [correlation_of(r.idempotency_key, r.run_metadata)
                                                  for r in waiting])
        yield [(run, verdict) for run, verdict in zip(waiting, verdicts, strict=True) if verdict.holds]
        if len(waiting) < RELEASE_BATCH:
            return
        after = (waiting[-1].created_at, waiting[-1].id)


WaitingCursor = tuple[str, datetime, str]  # (job_id, created_at, id) of the last waiting run looked at


def recheck_page(session: Session, after: WaitingCursor | None, *,
                 limit: int) -> tuple[list[tuple[Run, Verdict]], int, WaitingCursor | None]:
    """The next ``limit`` waiting runs after ``after`` in (job, creation) order, re-evaluated: those whose
    edges all hold, how many were looked at, and the cursor to go on from (``None`` once the end is
    reached: the next pass starts over). Each job's
    dependency lock is taken before its runs are evaluated, in job-id order (see the module doc)."""
    query = sa.select(Run).where(Run.status == RunStatus.WAITING.value)
    if after is not None:
        query = query.where(sa.tuple_(Run.job_id, Run.created_at, Run.id) > sa.tuple_(*(sa.literal(v) for v in after)))
    waiting = list(session.scalars(query.order_by(Run.job_id, Run.created_at, Run.id).limit(limit)))
    releasable: list[tuple[Run, Verdict]] = []
    by_job: dict[str, list[Run]] = {}
    for run in waiting:
        by_job.setdefault(run.job_id, []).append(run)
    for job_id, runs in by_job.items():
        lock_key(session, "deps", job_id)
        verdicts = evaluate_many(session, edges_of(session, job_id),
                                 [correlation_of(r.idempotency_key, r.run_metadata) for r in runs])
        releasable += [(run, verdict) for run, verdict in zip(runs, verdicts, strict=True) if verdict.holds]
    if len(waiting) < limit:
        return releasable, len(waiting), None
    last = waiting[-1]
    return releasable, len(waiting), (last.job_id, last.created_at, last.id)
