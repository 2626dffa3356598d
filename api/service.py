"""Service endpoints that need no key (§1.8): liveness, readiness, metrics. Request ids and timing."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from flask import Flask, Response, g

from api.context import services
from api.errors import error_response
from api.pagination import json_response
from api.resources import NOT_READY, READINESS, STATUS
from api.schemas.resources import schema_of
from shared.db.schema_version import current_revisions
from shared.resource import Resource


def healthz() -> Response:
    return json_response({"status": "ok"})


def readyz() -> Response:
    checks = {"database": "ok", "redis": "ok"}
    svc = services()
    lag = None
    try:
        with svc.engine.connect() as conn:
            lag = svc.shipped_schema.lag(current_revisions(conn))
    except Exception:
        checks["database"] = "unavailable"
    if lag is not None:
        checks["database"] = "outdated"
    try:
        svc.redis.ping()
    except Exception:
        checks["redis"] = "unavailable"
    if all(v == "ok" for v in checks.values()):
        return json_response({"status": "ok", "checks": checks})
    if lag is not None:
        return error_response(503, f"Not ready: {lag}", extra={"checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return error_response(503, f"Not ready: {failing} unavailable", extra={"checks": checks})


def _add_request_id(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


def _json(description: str, resource: Resource) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema_of(resource)}}}


# Served to anyone: no API key (the API's default security does not apply).
_KEYLESS: dict[str, Any] = {"tags": ["service"], "security": []}


def document(app: Flask, spec: APISpec) -> None:
    """The key-less service routes in /openapi.json, beside the /v1 blueprints."""
    rules = {rule.endpoint: rule for rule in app.url_map.iter_rules()}
    spec.path(rule=rules["healthz"], operations={"get": {
        **_KEYLESS, "summary": "Liveness: the process serves requests (no key, no dependencies)",
        "responses": {"200": _json("Alive", STATUS)}}})
    spec.path(rule=rules["readyz"], operations={"get": {
        **_KEYLESS, "summary": "Readiness: PostgreSQL and Redis answer, and the database schema is this "
                               "release's or newer (no key)",
        "responses": {"200": _json("Ready", READINESS),
                      "503": _json("A backing service is unavailable, or the database schema is older than this "
                                   "release (`outdated`: run `sluice db upgrade`); `checks` names it", NOT_READY)}}})
    spec.path(rule=rules["metrics"], operations={"get": {
        **_KEYLESS, "summary": "Prometheus metrics in the text exposition format (no key)",
        "responses": {"200": {"description": "Metric families",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}})


def install(app: Flask) -> None:
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])
    app.after_request(_add_request_id)
