"""The Run resource (CONTRACT §4.6) as a JSON-ready dict: one rendering for the API and for webhooks."""

from __future__ import annotations

import json
from typing import Any

from shared.clock import format_ts
from shared.db.models import Run


def run_to_dict(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "job_id": run.job_id,
        "project_id": run.project_id,
        "status": run.status,
        "attempt": run.attempt,
        "payload": json.loads(run.payload) if run.payload else {},
        "result": run.result,
        "metadata": run.run_metadata or {},
        "error": run.error,
        "error_class": run.error_class,
        "triggered_by": run.triggered_by,
        "scheduled_at": format_ts(run.scheduled_at),
        "started_at": format_ts(run.started_at),
        "finished_at": format_ts(run.finished_at),
        "heartbeat_at": format_ts(run.heartbeat_at),
        "next_retry_at": format_ts(run.next_retry_at),
        "expires_at": format_ts(run.expires_at),
        "parent_run_id": None,
        "workflow_step_run_id": None,
        "priority": run.priority,
        "idempotency_key": run.idempotency_key,
        "job_version": run.job_version,
        "job_version_id": run.job_version_id,
        "max_attempts_override": run.max_attempts_override,
        "timeout_secs_override": run.timeout_secs_override,
        "retry_backoff": run.retry_backoff,
        "retry_initial_delay_secs": run.retry_initial_delay_secs,
        "retry_max_delay_secs": run.retry_max_delay_secs,
        "execution_trace": run.execution_trace,
        "debug_mode": run.debug_mode,
        "continuation_of": run.continuation_of,
        "lineage_depth": run.lineage_depth,
        "tags": run.tags or {},
        "created_by": run.created_by,
        "batch_id": run.batch_id,
        "concurrency_key": run.concurrency_key,
        "created_at": format_ts(run.created_at),
    }
