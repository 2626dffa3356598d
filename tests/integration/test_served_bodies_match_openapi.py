"""Every documented operation is called, and every body it serves — successes and errors — must validate
against the response schema ``/openapi.json`` documents for that status: every documented field present,
none undocumented, each of its type (null only where documented), timestamps in the one format.

The runs read back are written with every nullable field set as well as with none, so both sides of each
field's nullability are served.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from flask import Flask

from api.app import create_app
from shared.clock import parse_ts, utcnow
from shared.db.engine import transaction
from shared.db.models import Job
from tests import factories

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_timestamp(value: object) -> bool:
    """The one timestamp format the API writes (``format_ts``)."""
    return not isinstance(value, str) or (_TIMESTAMP.fullmatch(value) is not None and bool(parse_ts(value)))


class Spec:
    """The served OpenAPI document, turned into JSON Schema validators per operation and status."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.called: set[tuple[str, str]] = set()  # (method, path template) answered with a success

    def operations(self) -> set[tuple[str, str]]:
        return {(method.upper(), path) for path, operations in self.document["paths"].items()
                for method in operations if method != "parameters"}

    def validate(self, method: str, template: str, status: int, body: Any) -> None:
        operation = self.document["paths"][template][method.lower()]
        responses = operation["responses"]
        response = responses.get(str(status)) or responses.get("default")
        assert response is not None, f"{method} {template}: {status} is not documented"
        schema = self._resolve(response)["content"]["application/json"]["schema"]
        jsonschema.Draft7Validator(self.json_schema(schema), format_checker=_FORMATS).validate(body)
        if status < 400:
            self.called.add((method, template))

    def json_schema(self, node: Any) -> Any:
        """OpenAPI 3.0 schema → JSON Schema: references inlined, ``nullable`` as a ``null`` type."""
        if isinstance(node, list):
            return [self.json_schema(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return self.json_schema(self._resolve(node))
        converted = {key: self.json_schema(value) for key, value in node.items() if key != "nullable"}
        if node.get("nullable"):
            if "type" in converted:
                converted["type"] = [converted["type"], "null"]
            else:
                converted = {"anyOf": [converted, {"type": "null"}]}
        return converted

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            _, section, name = node["$ref"].removeprefix("#/").split("/")
            node = self.document["components"][section][name]
        return node


class Caller:
    """Calls operations by their documented path template and checks each answer against the document."""

    def __init__(self, app: Flask, spec: Spec, auth: dict[str, str]) -> None:
        self.client = app.test_client()
        self.spec = spec
        self.auth = auth

    def __call__(self, method: str, template: str, expect: int, *, headers: dict[str, str] | None = None,
                 **kwargs: Any) -> Any:
        path = template.format(**kwargs.pop("params", {}))
        response = self.client.open(path, method=method, headers=self.auth if headers is None else headers,
                                    **kwargs)
        assert response.status_code == expect, (method, path, response.get_data(as_text=True))
        body = response.get_json()
        if response.status_code != 204:
            self.spec.validate(method, template, response.status_code, body)
        elif response.status_code < 400:
            self.spec.called.add((method, template))
        return body


def _rich_run(session: Any, job: Job, status: str) -> str:
    """A run with every nullable field of the Run resource set."""
    now = utcnow()
    run = factories.make_run(
        session, job, status=status, now=now - timedelta(minutes=5), attempt=2, result={"ok": [1, 2]},
        error="boom", error_class="http_5xx", scheduled_at=now - timedelta(minutes=6),
        started_at=now - timedelta(minutes=5), finished_at=now - timedelta(minutes=4), heartbeat_at=now,
        next_retry_at=now + timedelta(minutes=1), expires_at=now + timedelta(days=1), idempotency_key="k-rich",
        max_attempts_override=5, timeout_secs_override=30, execution_trace={"connect_ms": 1.5},
        continuation_of=factories.make_run(session, job, status="completed").id, batch_id=None,
        concurrency_key="c", tags={"t": "v"}, run_metadata={"m": "v"}, debug_mode=True, priority=3,
        payload='{"n": 1}')
    return run.id


def test_every_documented_operation_serves_what_it_documents(app: Flask, auth: dict[str, str],
                                                             session_factory: Any) -> None:
    spec = Spec(app.test_client().get("/openapi.json").get_json())
    call = Caller(app, spec, auth)
    job_body = {"name": "Doc", "slug": "doc", "endpoint_url": "http://127.0.0.1:9/e", "tags": {"a": "b"},
                "webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": "whsec_" + "s" * 32,
                "rate_limit_keys": [{"name": "tenant", "max": 2, "window_secs": 10}], "retry_strategy": "custom",
                "retry_delays_secs": [1, 5], "payload_schema": {"type": "object"}, "max_concurrency": 3}
    job = call("POST", "/v1/jobs", 201, json=job_body)
    upstream = call("POST", "/v1/jobs", 201, json={"name": "Up", "slug": "up", "endpoint_url": "http://127.0.0.1:9/u"})
    call("POST", "/v1/jobs/batch", 201, json=[{"name": "B", "slug": "b-1", "endpoint_url": "http://127.0.0.1:9/b"}])
    call("POST", "/v1/jobs/{job}/clone", 201, params={"job": "doc"}, json={"name": "Copy", "slug": "doc-copy"})
    call("PATCH", "/v1/jobs/{job}", 200, params={"job": "doc"}, json={"description": "second version"})
    call("GET", "/v1/jobs", 200)  # in front of Flask
    call("GET", "/v1/jobs", 200, query_string={"tag_key": "a"})  # Flask's
    call("GET", "/v1/jobs/{job}", 200, params={"job": job["id"]})
    call("GET", "/v1/jobs/{job}", 200, params={"job": "doc"}, query_string={"unused": "1"})
    versions = call("GET", "/v1/jobs/{job}/versions", 200, params={"job": "doc"})
    call("GET", "/v1/jobs/{job}/versions/{version_id}", 200, params={"job": "doc", "version_id": versions[-1]["id"]})
    edge = call("POST", "/v1/jobs/{job}/dependencies", 201, params={"job": "b-1"},
                json={"depends_on_job_id": upstream["id"], "condition": "any"})
    call("GET", "/v1/jobs/{job}/dependencies", 200, params={"job": "b-1"})
    call("DELETE", "/v1/jobs/{job}/dependencies/{dep_id}", 204, params={"job": "b-1", "dep_id": edge["id"]})
    call("POST", "/v1/jobs/batch-disable", 200, json={"ids": ["doc-copy"]})
    call("POST", "/v1/jobs/batch-enable", 200, json={"job_ids": ["doc-copy"]})

    trigger = "/v1/jobs/{job}/trigger"
    triggered = call("POST", trigger, 201, params={"job": "doc"}, json={"payload": {"n": 1}})  # in front
    call("POST", trigger, 201, params={"job": "doc"}, json={"payload": {"n": 2}},
         headers={**auth, "Idempotency-Key": "k-1"})  # Flask's
    call("POST", trigger, 200, params={"job": "doc"}, json={"payload": {"n": 2}},
         headers={**auth, "Idempotency-Key": "k-1"})
    call("POST", trigger, 200, params={"job": "doc"}, json={"payload": {"n": 3}, "dry_run": True})
    call("POST", "/v1/jobs/{job}/trigger/bulk", 201, params={"job": "doc"}, json={"items": [{"payload": {}}] * 3})

    with transaction(session_factory) as s:
        stored = s.get(Job, job["id"])
        rich = _rich_run(s, stored, "failed")
        finished = factories.make_run(s, stored, status="completed", started_at=utcnow() - timedelta(seconds=3),
                                      finished_at=utcnow()).id
    call("GET", "/v1/jobs/{job}/health", 200, params={"job": "doc"})
    call("GET", "/v1/runs", 200)
    call("GET", "/v1/runs/dlq", 200)
    call("GET", "/v1/jobs/{job}/runs", 200, params={"job": "doc"})
    call("GET", "/v1/runs/{run_id}", 200, params={"run_id": rich})
    call("GET", "/v1/runs/{run_id}/events", 200, params={"run_id": triggered["id"]})
    call("POST", "/v1/runs/{run_id}/replay", 201, params={"run_id": finished})
    call("POST", "/v1/runs/bulk-replay", 200, json={"run_ids": [rich, triggered["id"], "nope"]})
    call("POST", "/v1/runs/{run_id}/cancel", 200, params={"run_id": triggered["id"]})
    runs = call("GET", "/v1/jobs/{job}/runs", 200, params={"job": "doc"}, query_string={"status": "queued"})
    call("DELETE", "/v1/runs/{run_id}", 200, params={"run_id": runs[0]["id"]})
    call("POST", "/v1/runs/bulk-cancel", 200, json={"run_ids": [runs[1]["id"], rich, "nope"]})
    call("DELETE", "/v1/jobs/{job}", 204, params={"job": "doc-copy"})
    call("GET", "/healthz", 200, headers={})
    call("GET", "/readyz", 200, headers={})
    assert app.test_client().get("/metrics").status_code == 200  # text, not JSON

    # Errors: each kind of answer in the one error shape.
    call("GET", "/v1/jobs", 401, headers={})
    call("GET", "/v1/jobs/{job}", 404, params={"job": "nope"})
    call("POST", trigger, 401, params={"job": "doc"}, headers={"Authorization": "Bearer sk_" + "0" * 64})
    call("POST", trigger, 422, params={"job": "doc"}, json={"priority": "high"})
    call("POST", trigger, 415, params={"job": "doc"}, data=b"{}", content_type="text/plain")
    call("POST", "/v1/jobs", 409, json=job_body)
    call("POST", "/v1/runs/{run_id}/cancel", 409, params={"run_id": rich})
    call("GET", "/v1/jobs", 400, query_string={"cursor": "garbage"})

    assert spec.operations() - spec.called == {("GET", "/metrics")}


def test_readiness_failure_serves_its_documented_body(settings: Any) -> None:
    app = create_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))  # nothing listens on port 1
    try:
        spec = Spec(app.test_client().get("/openapi.json").get_json())
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        spec.validate("GET", "/readyz", 503, response.get_json())
        assert response.get_json()["checks"] == {"database": "ok", "redis": "unavailable"}
    finally:
        app.extensions["sluice"].close()


@pytest.mark.parametrize("change", ["extra field", "missing field", "other type", "null", "timestamp format"])
def test_the_check_fails_on_a_body_unlike_its_documentation(app: Flask, auth: dict[str, str], change: str) -> None:
    """The validation above is not vacuous: a served body changed in any of these ways fails it."""
    client = app.test_client()
    spec = Spec(client.get("/openapi.json").get_json())
    job = client.post("/v1/jobs", json={"name": "J", "slug": "j", "endpoint_url": "http://127.0.0.1:9/e"},
                      headers=auth).get_json()
    spec.validate("GET", "/v1/jobs/{job}", 200, job)
    if change == "extra field":
        job["undocumented"] = 1
    elif change == "missing field":
        del job["timezone"]
    elif change == "other type":
        job["version"] = "1"
    elif change == "null":
        job["name"] = None
    else:
        job["created_at"] = job["created_at"].replace("Z", "+00:00")
    with pytest.raises(jsonschema.ValidationError):
        spec.validate("GET", "/v1/jobs/{job}", 200, job)
