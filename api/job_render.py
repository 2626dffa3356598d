"""JSON-ready dicts of the Job (§2.1), Version (§2.4) and Dependency (§3.9) resources.

Plain dict building on purpose: these run on every read, and marshmallow dumping would cost more than
the query. Every documented field is always present; the webhook secret is only ever masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.clock import format_ts
from shared.jobs.config import DEFAULTS, W_FIELDS
from shared.webhooks.signing import mask_secret

# The Job resource's fields in the order ``render_job`` writes them (``api.job_page`` selects them so).
JOB_FIELDS = ("id", "project_id", "group_id", "name", "slug", "description", "cron", "payload_schema", "tags",
              "endpoint_url", "fallback_endpoint_url", "max_attempts", "timeout_secs", "max_concurrency",
              "execution_window_cron", "timezone", "rate_limit_max", "rate_limit_window_secs",
              "max_concurrency_per_key", "rate_limit_keys", "default_run_metadata", "dedup_window_secs", "enabled",
              "webhook_url", "webhook_secret", "run_ttl_secs", "retry_strategy", "retry_delays_secs",
              "environment_id", "version_policy", "backwards_compatible", "version", "version_id", "created_by",
              "updated_by", "created_at", "updated_at")


def _config(src: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "group_id": src["group_id"],
        "name": src["name"],
        "slug": src["slug"],
        "description": src["description"],
        "cron": src["cron"],
        "payload_schema": src["payload_schema"],
        "tags": src["tags"] or {},
        "endpoint_url": src["endpoint_url"],
        "fallback_endpoint_url": src["fallback_endpoint_url"],
        "max_attempts": src["max_attempts"],
        "timeout_secs": src["timeout_secs"],
        "max_concurrency": src["max_concurrency"],
        "execution_window_cron": src["execution_window_cron"],
        "timezone": src["timezone"],
        "rate_limit_max": src["rate_limit_max"],
        "rate_limit_window_secs": src["rate_limit_window_secs"],
        "max_concurrency_per_key": src["max_concurrency_per_key"],
        "rate_limit_keys": src["rate_limit_keys"] or [],
        "default_run_metadata": src["default_run_metadata"] or {},
        "dedup_window_secs": src["dedup_window_secs"],
        "enabled": src["enabled"],
        "webhook_url": src["webhook_url"],
        "webhook_secret": mask_secret(src["webhook_secret"]),
        "run_ttl_secs": src["run_ttl_secs"],
        "retry_strategy": src["retry_strategy"],
        "retry_delays_secs": src["retry_delays_secs"] or [],
        "environment_id": src["environment_id"],
        "version_policy": src["version_policy"],
        "backwards_compatible": src["backwards_compatible"],
    }


def render_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """The Job resource from a job record (``jobs`` row mapping)."""
    body: dict[str, Any] = {"id": job["id"], "project_id": job["project_id"]}
    body.update(_config(job))
    body["version"] = job["version"]
    body["version_id"] = job["version_id"]
    body["created_by"] = job["created_by"]
    body["updated_by"] = job["updated_by"]
    body["created_at"] = format_ts(job["created_at"])
    body["updated_at"] = format_ts(job["updated_at"])
    return body


def render_version(version: Mapping[str, Any]) -> dict[str, Any]:
    """The Version resource: the seed's fields first, then ``version_id``, ``created_by`` and the rest."""
    config = version["config"]
    body: dict[str, Any] = {"id": version["id"], "job_id": version["job_id"], "version": version["version"]}
    snapshot = _config(_with_defaults(config))
    body.update(snapshot)
    body["version_id"] = version["id"]
    body["created_by"] = version["created_by"]
    body["created_at"] = format_ts(version["created_at"])
    return body


def _with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Snapshots hold every W field; defaults guard against a snapshot written by an older release."""
    return {f: config.get(f, DEFAULTS.get(f)) for f in W_FIELDS}


def render_edge(edge: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": edge["id"],
        "job_id": edge["job_id"],
        "depends_on_job_id": edge["depends_on_job_id"],
        "condition": edge["condition"],
        "created_at": format_ts(edge["created_at"]),
    }
