"""Service endpoints that need no key (§1.8): liveness, readiness, metrics. Request ids and timing."""

from __future__ import annotations

import sqlalchemy as sa
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


def install(app: Flask) -> None:
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])
    app.after_request(_add_request_id)
