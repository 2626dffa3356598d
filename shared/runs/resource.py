"""The Run and Run event resources, described once (``shared.resource``); read from a ``Run`` (or any
object with its attributes) and a ``RunEvent``."""

from __future__ import annotations

from shared.resource import ANY, BOOLEAN, INTEGER, OBJECT, STRING, Field, Resource, Writing, timestamp

RUN = Resource("Run", (
    Field("id", STRING),
    Field("job_id", STRING),
    Field("project_id", STRING),
    Field("status", STRING),
    Field("attempt", INTEGER),
    Field("payload", ANY, writing=Writing.JSON_TEXT),
    Field("result", ANY, nullable=True),
    Field("metadata", OBJECT, values=STRING, source="run_metadata", writing=Writing.OR_EMPTY_OBJECT),
    Field("error", STRING, nullable=True),
    Field("error_class", STRING, nullable=True),
    Field("triggered_by", STRING),
    timestamp("scheduled_at", nullable=True),
    timestamp("started_at", nullable=True),
    timestamp("finished_at", nullable=True),
    timestamp("heartbeat_at", nullable=True),
    timestamp("next_retry_at", nullable=True),
    timestamp("expires_at", nullable=True),
    Field("parent_run_id", STRING, nullable=True, source=None),
    Field("workflow_step_run_id", STRING, nullable=True, source=None),
    Field("priority", INTEGER),
    Field("idempotency_key", STRING, nullable=True),
    Field("job_version", INTEGER),
    Field("job_version_id", STRING),
    Field("max_attempts_override", INTEGER, nullable=True),
    Field("timeout_secs_override", INTEGER, nullable=True),
    Field("retry_backoff", STRING),
    Field("retry_initial_delay_secs", INTEGER),
    Field("retry_max_delay_secs", INTEGER),
    Field("execution_trace", OBJECT, nullable=True),
    Field("debug_mode", BOOLEAN),
    Field("continuation_of", STRING, nullable=True),
    Field("lineage_depth", INTEGER),
    Field("tags", OBJECT, values=STRING, writing=Writing.OR_EMPTY_OBJECT),
    Field("created_by", STRING),
    Field("batch_id", STRING, nullable=True),
    Field("concurrency_key", STRING, nullable=True),
    Field("traceparent", STRING, nullable=True,
          description="W3C trace context of the run: the trigger's valid traceparent header, else a new trace; "
                      "each attempt calls the endpoint in this trace with a new parent id"),
    timestamp("created_at"),
), by_attribute=True)

RUN_EVENT = Resource("RunEvent", (
    Field("id", STRING),
    Field("run_id", STRING),
    Field("type", STRING),
    Field("message", STRING, nullable=True),
    Field("data", OBJECT, writing=Writing.OR_EMPTY_OBJECT),
    timestamp("created_at"),
), by_attribute=True)
