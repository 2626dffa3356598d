"""Queueing terminal-run webhooks (§5.15) in PostgreSQL; the worker delivers them after commit."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy.orm import Session

from shared.clock import format_ts
from shared.db.models import Run, WebhookDelivery
from shared.ids import uuid7
from shared.runs.effects import Effects
from shared.runs.view import run_to_dict

EVENT_TYPES = {
    "completed": "run.completed",
    "failed": "run.failed",
    "system_failed": "run.failed",
    "timed_out": "run.timed_out",
    "crashed": "run.crashed",
    "canceled": "run.canceled",
    "expired": "run.expired",
}


def queue_terminal_webhook(session: Session, run: Run, *, url: str, now: datetime, effects: Effects) -> str:
    """Store the webhook event of a run that just became terminal, for the live job's ``url``; its id."""
    delivery_id = uuid7()
    body = {"type": EVENT_TYPES[run.status], "timestamp": format_ts(run.finished_at), "data": run_to_dict(run)}
    session.add(WebhookDelivery(
        id=delivery_id, run_id=run.id, job_id=run.job_id, event_type=body["type"], url=url,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False), state="pending", attempts=0,
        next_attempt_at=now, created_at=now, updated_at=now,
    ))
    effects.webhooks.append(delivery_id)
    return delivery_id
