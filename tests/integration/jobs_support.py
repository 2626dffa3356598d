"""Helpers shared by the jobs API tests (tests/integration/test_jobs_*.py)."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

# The Job resource's fields as the contract lists them, written out on purpose: the oracle that the one
# description (``shared.jobs.resource.JOB``, from which the rendering and the schema come) is checked against.
JOB_FIELDS = {
    "id", "project_id", "group_id", "name", "slug", "description", "cron", "payload_schema", "tags",
    "endpoint_url", "fallback_endpoint_url", "max_attempts", "timeout_secs", "max_concurrency",
    "execution_window_cron", "timezone", "rate_limit_max", "rate_limit_window_secs", "max_concurrency_per_key",
    "rate_limit_keys", "default_run_metadata", "dedup_window_secs", "enabled", "webhook_url", "webhook_secret",
    "run_ttl_secs", "retry_strategy", "retry_delays_secs", "environment_id", "version", "version_id",
    "version_policy", "backwards_compatible", "created_by", "updated_by", "created_at", "updated_at",
    "webhook_secret_previous",
}
SECRET = "s3cr3t-value-XY9Q"  # 17 chars, plain form


def opened(settings: Any, stored: str) -> str:
    """A stored webhook secret, checked to be sealed (never plain), opened with the test key."""
    assert stored.startswith("whsec_\u2026") and SECRET not in stored, stored
    return settings.secret_box.open(stored)  # type: ignore[no-any-return]
ENDPOINT = "http://127.0.0.1:9/endpoint"


def job_body(slug: str = "job-a", **fields: Any) -> dict[str, Any]:
    return {"name": fields.pop("name", slug.upper()), "slug": slug, "endpoint_url": ENDPOINT, **fields}


def create(client: FlaskClient, auth: dict[str, str], slug: str = "job-a", **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=job_body(slug, **fields), headers=auth)
    assert response.status_code == 201, response.json
    return response.json  # type: ignore[no-any-return]


def assert_error(response: Any, code: int, message: str | None = None) -> dict[str, Any]:
    """The §1.4 error shape: code, status, message, errors (422 only), request_id."""
    assert response.status_code == code, (response.status_code, response.get_data(as_text=True))
    body = response.json
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    expected_keys = {"code", "status", "message", "request_id"} | ({"errors"} if code == 422 else set())
    assert set(body) == expected_keys, body
    if message is not None:
        assert body["message"] == message, body
    return body  # type: ignore[no-any-return]
