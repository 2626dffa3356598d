"""The Job, Version, Dependency and job-health resources, described once (``shared.resource``).

A job record (a ``jobs`` row mapping, or the dict that was inserted) renders as ``JOB.render(record)``; a
version row as ``render_version(row)``. Every documented field is always present; the webhook secret is
only ever masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.jobs.config import DEFAULTS, W_FIELDS
from shared.resource import (
    ARRAY,
    BOOLEAN,
    INTEGER,
    NUMBER,
    OBJECT,
    STRING,
    Field,
    Resource,
    Writing,
    timestamp,
)

RATE_LIMIT_KEY = Resource("RateLimitKeyOut", (
    Field("name", STRING), Field("max", INTEGER), Field("window_secs", INTEGER),
))

# A job's writable configuration as the Job and the Version resources show it (``W_FIELDS`` order).
CONFIG_FIELDS = (
    Field("group_id", STRING, nullable=True),
    Field("name", STRING),
    Field("slug", STRING),
    Field("description", STRING, nullable=True),
    Field("cron", STRING, nullable=True),
    Field("payload_schema", OBJECT, nullable=True, description="JSON Schema the payload of every run must satisfy"),
    Field("tags", OBJECT, values=STRING, writing=Writing.OR_EMPTY_OBJECT),
    Field("endpoint_url", STRING),
    Field("fallback_endpoint_url", STRING, nullable=True),
    Field("max_attempts", INTEGER),
    Field("timeout_secs", INTEGER),
    Field("max_concurrency", INTEGER, nullable=True),
    Field("execution_window_cron", STRING, nullable=True),
    Field("timezone", STRING),
    Field("rate_limit_max", INTEGER, nullable=True),
    Field("rate_limit_window_secs", INTEGER, nullable=True),
    Field("max_concurrency_per_key", INTEGER, nullable=True),
    Field("rate_limit_keys", ARRAY, items=RATE_LIMIT_KEY, writing=Writing.OR_EMPTY_ARRAY),
    Field("default_run_metadata", OBJECT, values=STRING, writing=Writing.OR_EMPTY_OBJECT),
    Field("dedup_window_secs", INTEGER, nullable=True),
    Field("enabled", BOOLEAN),
    Field("webhook_url", STRING, nullable=True),
    Field("webhook_secret", STRING, nullable=True, writing=Writing.MASKED, description="masked: whsec_…XXXX"),
    Field("run_ttl_secs", INTEGER, nullable=True),
    Field("retry_strategy", STRING),
    Field("retry_delays_secs", ARRAY, items=INTEGER, writing=Writing.OR_EMPTY_ARRAY),
    Field("environment_id", STRING, nullable=True),
    Field("version_policy", STRING),
    Field("backwards_compatible", BOOLEAN),
    Field("webhook_secret_previous", STRING, nullable=True, writing=Writing.MASKED,
          description="masked: whsec_…XXXX; a second secret that also signs while receivers switch to webhook_secret"),
)

JOB = Resource("Job", (
    Field("id", STRING),
    Field("project_id", STRING),
    *CONFIG_FIELDS,
    Field("version", INTEGER),
    Field("version_id", STRING),
    Field("created_by", STRING),
    Field("updated_by", STRING),
    timestamp("created_at"),
    timestamp("updated_at"),
))

VERSION = Resource("JobVersion", (
    Field("id", STRING),
    Field("job_id", STRING),
    Field("version", INTEGER),
    *CONFIG_FIELDS,
    Field("version_id", STRING, source="id"),
    Field("created_by", STRING),
    timestamp("created_at"),
))

DEPENDENCY = Resource("Dependency", (
    Field("id", STRING),
    Field("job_id", STRING),
    Field("depends_on_job_id", STRING),
    Field("condition", STRING),
    timestamp("created_at"),
))

JOB_HEALTH = Resource("JobHealth", (
    Field("job_id", STRING),
    Field("window", STRING),
    timestamp("since"),
    Field("total_runs", INTEGER),
    Field("completed_runs", INTEGER),
    Field("failed_runs", INTEGER),
    Field("timed_out_runs", INTEGER),
    Field("crashed_runs", INTEGER),
    Field("canceled_runs", INTEGER),
    Field("expired_runs", INTEGER),
    Field("success_rate", NUMBER),
    Field("avg_duration_secs", NUMBER),
    Field("p95_duration_secs", NUMBER),
    Field("health_score", NUMBER, description="0–100; -1 without runs in the window"),
))


def render_version(version: Mapping[str, Any]) -> dict[str, Any]:
    """The Version resource of a ``job_versions`` row: its snapshot's configuration and the row's columns.
    Snapshots hold every W field; defaults guard against a snapshot written by an older release."""
    config = version["config"]
    return VERSION.render({**{f: config.get(f, DEFAULTS.get(f)) for f in W_FIELDS}, **version})
