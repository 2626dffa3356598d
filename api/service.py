"""Service endpoints that need no key (§1.8): liveness, readiness, metrics. Request ids and timing."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from apispec import APISpec
from flask import Flask, Response, g

from api.context import services
from api.errors import error_response
from api.pagination import json_response


def healthz() -> Response:
    return json_response({"status": "ok"})


def readyz() -> Response:
    checks = {"database": "ok", "redis": "ok"}
    svc = services()
    try:
        with svc.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception:
        checks["database"] = "unavailable"
    try:
        svc.redis.ping()
    except Exception:
        checks["redis"] = "unavailable"
    if all(v == "ok" for v in checks.values()):
        return json_response({"status": "ok", "checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return error_response(503, f"Not ready: {failing} unavailable", extra={"checks": checks})


def _add_request_id(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


_STATUS = {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}, "required": ["status"]}
_CHECKS = {"type": "object", "properties": {name: {"type": "string", "enum": ["ok", "unavailable"]}
                                            for name in ("database", "redis")}}
_READY = {"type": "object", "required": ["status", "checks"],
          "properties": {"status": {"type": "string", "enum": ["ok"]}, "checks": _CHECKS}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(app: Flask, spec: APISpec) -> None:
    """The key-less service routes in /openapi.json, beside the /v1 blueprints (§1.8)."""
    error = {"$ref": "#/components/schemas/Error"}
    rules = {rule.endpoint: rule for rule in app.url_map.iter_rules()}
    spec.path(rule=rules["healthz"], operations={"get": {
        "tags": ["service"], "summary": "Liveness: the process serves requests (no key, no dependencies)",
        "responses": {"200": _json("Alive", _STATUS)}}})
    spec.path(rule=rules["readyz"], operations={"get": {
        "tags": ["service"], "summary": "Readiness: PostgreSQL and Redis answer (no key)",
        "responses": {"200": _json("Ready", _READY),
                      "503": _json("A backing service is unavailable; `checks` names it",
                                   {"allOf": [error, {"type": "object", "properties": {
                                       "checks": _CHECKS}}]})}}})
    spec.path(rule=rules["metrics"], operations={"get": {
        "tags": ["service"], "summary": "Prometheus metrics in the text exposition format (no key)",
        "responses": {"200": {"description": "Metric families",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}})


def install(app: Flask) -> None:
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])
    app.after_request(_add_request_id)
