"""JSON bodies of the trigger and runs endpoints, built on the one Run rendering (``shared.runs.view``)."""

from __future__ import annotations

from typing import Any

from shared.clock import format_ts
from shared.db.models import RunEvent
from shared.runs.view import run_to_dict
from shared.triggers.manual import TriggerOutcome


def render_trigger(outcome: TriggerOutcome) -> dict[str, Any]:
    """§4.3: the full Run plus ``payload_hash`` and ``idempotency_hit`` (and ``dry_run`` on previews)."""
    body = run_to_dict(outcome.run)
    body["payload_hash"] = outcome.run.payload_hash
    body["idempotency_hit"] = outcome.idempotency_hit
    if outcome.dry_run:
        body["dry_run"] = True
    return body


def render_event(event: RunEvent) -> dict[str, Any]:
    return {"id": event.id, "run_id": event.run_id, "type": event.type, "message": event.message,
            "data": event.data or {}, "created_at": format_ts(event.created_at)}
