"""What every terminal transition sets in motion (§4.7 invariants): the job's webhook (§5.15) and
re-evaluation of dependent jobs' waiting runs (§5.14). Called by ``shared.runs.transitions.transition``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from shared.db.models import Run
from shared.runs.transitions import Effects


def on_terminal(session: Session, run: Run, *, now: datetime, effects: Effects) -> None:
    from shared.dependencies.gating import release_dependents
    from shared.webhooks.outbox import queue_terminal_webhook

    if not effects.suppress_webhooks:
        queue_terminal_webhook(session, run, now=now, effects=effects)
    release_dependents(session, run.job_id, now=now, effects=effects)
