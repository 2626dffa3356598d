"""Leaked leases: a concurrency lease whose run is no longer executing is removed.

A lease normally goes when its attempt ends (``worker.handoff``, the heartbeat thread's release batch). A
worker that dies in between (inside the 0.5 s release batch, or in the middle of a hand-off) leaves its
leases until they expire, after the attempt's timeout plus ``SLUICE_LEASE_MARGIN_SECS``: hours for a long
timeout, during which a ``max_concurrency: 1`` job starts nothing. This sweep walks the jobs that have a
concurrency cap, ``JOBS_PER_PASS`` per pass from a cursor, reads the members of their lease sets (the job's,
and those of the concurrency keys its runs used lately) and removes every lease whose run has finished or
no longer exists. Leases of runs in any other status stay: an executing run's is live, and a queued or
delayed run may be in the middle of its start (its lease is taken before the start commits). A run that
finished less than ``RELEASE_GRACE`` ago keeps its lease too: its worker releases it within half a second
(in a batch), and a busy fleet always has such runs, which are not leaks.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared import redis_keys
from shared.db.models import Job, Run
from shared.runs.status import TERMINAL

log = logging.getLogger("sluice.sweeper")

JOBS_PER_PASS = 200
KEYS_LOOKBACK = timedelta(hours=1)  # concurrency keys of runs that finished this recently are checked
RELEASE_GRACE = timedelta(seconds=10)  # a run that finished this recently still has its release coming
_FINISHED = frozenset(status.value for status in TERMINAL)


def sweep_leaked_leases(session: Session, client: redis.Redis, now: datetime,
                        after_job: str | None) -> tuple[int, str | None]:
    """Remove the leaked leases of the next ``JOBS_PER_PASS`` capped jobs after ``after_job``;
    ``(removed, cursor)``, the cursor ``None`` after the last job."""
    query = (sa.select(Job.id).where(sa.or_(Job.max_concurrency > 0, Job.max_concurrency_per_key > 0))
             .order_by(Job.id).limit(JOBS_PER_PASS))
    if after_job is not None:
        query = query.where(Job.id > after_job)
    job_ids = list(session.scalars(query))
    if not job_ids:
        return 0, None
    keyed = session.execute(
        sa.select(Run.job_id, Run.concurrency_key).where(
            Run.job_id.in_(job_ids), Run.concurrency_key.is_not(None), Run.concurrency_key != "",
            sa.or_(Run.status == "executing", Run.finished_at >= now - KEYS_LOOKBACK)).distinct()).all()
    keys = [redis_keys.concurrency_job(job_id) for job_id in job_ids]
    keys += [redis_keys.concurrency_key(job_id, key) for job_id, key in keyed]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zrange(key, 0, -1)
    members = {key: [m.decode() if isinstance(m, bytes) else m for m in found]
               for key, found in zip(keys, pipe.execute(), strict=True) if found}
    run_ids = sorted({m for found in members.values() for m in found})
    ended = {run_id: status in _FINISHED and (finished_at is None or finished_at <= now - RELEASE_GRACE)
             for run_id, status, finished_at in session.execute(
                 sa.select(Run.id, Run.status, Run.finished_at).where(Run.id.in_(run_ids)))} if run_ids else {}
    leaked = {run_id for run_id in run_ids if ended.get(run_id, True)}
    removed = 0
    if leaked:
        for key, found in members.items():
            gone = [m for m in found if m in leaked]
            if gone:
                pipe.zrem(key, *gone)
        removed = sum(pipe.execute())  # 0 when the releases got there first (a run that had just ended)
        if removed:
            log.warning("removed leaked concurrency leases", extra={"leases": removed, "jobs": len(job_ids)})
    return removed, job_ids[-1] if len(job_ids) == JOBS_PER_PASS else None
