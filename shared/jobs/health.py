"""Job health score (CONTRACT §8), computed from the ``runs`` table.

Population: the job's terminal runs with ``finished_at`` ≥ now − window. Counts come from one GROUP BY;
durations (``finished_at − started_at`` of runs that started) from one aggregate query using
``percentile_cont(0.95)`` (linear interpolation between the closest ranks).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Run
from shared.errors import semantic
from shared.runs.status import TERMINAL

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30),
}
DEFAULT_WINDOW = "7d"
_TERMINAL_VALUES = sorted(s.value for s in TERMINAL)

_DURATIONS = sa.text("""
    SELECT job_id, avg(d) AS avg_d, percentile_cont(0.95) WITHIN GROUP (ORDER BY d) AS p95_d
    FROM (SELECT job_id, EXTRACT(EPOCH FROM finished_at - started_at) AS d
          FROM runs
          WHERE job_id IN :job_ids AND status IN :statuses AND finished_at >= :since
                AND started_at IS NOT NULL) AS durations
    GROUP BY job_id
""").bindparams(sa.bindparam("job_ids", expanding=True), sa.bindparam("statuses", expanding=True))


def parse_window(value: str | None) -> str:
    """The window name, defaulting to 7d; anything but 1h, 1d, 7d, 30d → 400."""
    if value is None:
        return DEFAULT_WINDOW
    if value not in WINDOWS:
        raise semantic("window", "must be one of 1h, 1d, 7d, 30d")
    return value


def health_score(total: int, success_rate: float, avg: float, p95: float) -> float:
    """§8's formula on unrounded inputs; −1 when there are no runs."""
    if total == 0:
        return -1.0
    stability = 30.0 if p95 <= 0 or p95 <= 2 * avg else 30.0 * (2 * avg / p95)
    return min(100.0, 0.7 * success_rate + stability)


def _durations(session: Session, job_ids: list[str], since: datetime) -> dict[str, tuple[float, float]]:
    rows = session.execute(_DURATIONS, {"job_ids": job_ids, "statuses": _TERMINAL_VALUES, "since": since})
    return {row.job_id: (float(row.avg_d or 0.0), float(row.p95_d or 0.0)) for row in rows}


def job_health(session: Session, job_id: str, window: str, *, now: datetime) -> dict[str, Any]:
    """The §8 response body (``since`` as a datetime; the caller formats it)."""
    return jobs_health(session, [job_id], window, now=now)[job_id]


def jobs_health(session: Session, job_ids: list[str], window: str, *, now: datetime) -> dict[str, dict[str, Any]]:
    """``job_health`` of several jobs at once (two statements whatever their number), by job id."""
    if not job_ids:
        return {}
    since = now - WINDOWS[window]
    counts: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
    for job_id, status, count in session.execute(
            sa.select(Run.job_id, Run.status, sa.func.count())
            .where(Run.job_id.in_(job_ids), Run.status.in_(_TERMINAL_VALUES), Run.finished_at >= since)
            .group_by(Run.job_id, Run.status)):
        counts[job_id][status] = count
    with_runs = [job_id for job_id, per_status in counts.items() if per_status]
    durations = _durations(session, with_runs, since) if with_runs else {}
    return {job_id: _body(job_id, window, since, per_status, durations.get(job_id, (0.0, 0.0)))
            for job_id, per_status in counts.items()}


def _body(job_id: str, window: str, since: datetime, counts: dict[str, int],
          durations: tuple[float, float]) -> dict[str, Any]:
    total = sum(counts.values())
    completed = counts.get("completed", 0)
    avg, p95 = durations if total else (0.0, 0.0)
    success_rate = 100.0 * completed / total if total else 0.0
    score = health_score(total, success_rate, avg, p95)
    return {
        "job_id": job_id,
        "window": window,
        "since": since,
        "total_runs": total,
        "completed_runs": completed,
        "failed_runs": counts.get("failed", 0),
        "timed_out_runs": counts.get("timed_out", 0),
        "crashed_runs": counts.get("crashed", 0) + counts.get("system_failed", 0),
        "canceled_runs": counts.get("canceled", 0),
        "expired_runs": counts.get("expired", 0),
        "success_rate": round(success_rate, 2),
        "avg_duration_secs": round(avg, 2),
        "p95_duration_secs": round(p95, 2),
        "health_score": round(score, 2) if total else -1,
    }
