"""The fleet page: queue depth, runs by status, slots in use and rate windows per job, live workers (from
their heartbeats), cron lag.

The queue depth and the workers are the installation's (every project shares them; ``/metrics`` shows the
same without a key); everything else is the signed-in key's project only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Response

from api.console.blueprint import blp
from api.console.guard import console_page, current_visitor
from api.console.rendering import page
from api.context import get_session, services
from shared.clock import utcnow
from shared.jobs.store import limited_job_records
from shared.limits.limiter import Limits
from shared.messages.layout import DISPATCH_QUEUE, WEBHOOK_QUEUE
from shared.messages.queue_state import live_workers, pending_messages, ready_messages
from shared.runs.overview import cron_lags, executing_job_ids, status_counts

JOBS_SHOWN = 50
RECENT = timedelta(hours=1)


def _limits(session: Any, project_id: str, now_ms: int) -> list[dict[str, Any]]:
    limits = Limits(services().redis)
    busy = executing_job_ids(session, project_id, limit=JOBS_SHOWN)
    rows = []
    for job in limited_job_records(session, project_id, also=busy, limit=JOBS_SHOWN):
        window = job["rate_limit_window_secs"]
        rows.append({"job": job, "slots": limits.slots_in_use(job["id"], now_ms=now_ms),
                     "rate_used": limits.starts_in_window(job["id"], window, now_ms)
                     if job["rate_limit_max"] and window else None})
    return rows


@blp.route("/fleet", methods=["GET"])
@console_page("runs:read")
def fleet_page() -> Response:
    session = get_session()
    project = current_visitor().principal.project_id
    now = utcnow()
    now_ms = int(now.timestamp() * 1000)
    broker = services().broker
    queues = [{"name": queue, "ready": ready_messages(broker, queue), "pending": pending_messages(broker, queue)}
              for queue in (DISPATCH_QUEUE, WEBHOOK_QUEUE)]
    counts = status_counts(session, project, since=now - RECENT)
    return page("fleet.html", queues=queues, counts=counts, workers=live_workers(broker, now_ms), now_ms=now_ms,
                limits=_limits(session, project, now_ms), crons=cron_lags(session, project, limit=JOBS_SHOWN),
                live=any(counts.active.values()) or any(q["pending"] for q in queues))
