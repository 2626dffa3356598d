"""One structured log line per API request (logger ``sluice.api.request``).

Fields: ``method``, ``route`` (the URL rule), ``path``, ``status``, ``duration_ms``, ``request_id`` (the
``X-Request-Id`` the response carries) and ``project_id`` once the key is known. Never headers (so never
``Authorization``), query strings or bodies (CONTRACT §10.2). Probes and scrapes of the keyless service
endpoints are logged at DEBUG unless they fail, so a load balancer's health checks don't drown the log.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

log = logging.getLogger("sluice.api.request")

QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def _log_request(response: Response) -> Response:
    rule = request.url_rule
    started = g.get("started")  # set first thing by api.gate
    principal = g.get("principal")
    log_request(request.method, rule.rule if rule is not None else "<unmatched>", request.path,
                response.status_code, started, g.get("request_id"),
                principal.project_id if principal is not None else None)
    return response


def log_request(method: str, route: str, path: str, status: int, started: float | None, request_id: str | None,
                project_id: str | None) -> None:
    """The request's log line; ``started`` is its ``time.perf_counter()`` at arrival."""
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else 0.0
    fields: dict[str, object] = {
        "method": method, "route": route, "path": path, "status": status,
        "duration_ms": duration_ms, "request_id": request_id,
    }
    if project_id is not None:
        fields["project_id"] = project_id
    if status >= 500:
        level = logging.ERROR
    elif route in QUIET_ROUTES and status < 400:
        level = logging.DEBUG
    else:
        level = logging.INFO
    if log.isEnabledFor(level):
        # makeRecord + handle is what log.log does, minus the caller lookup (a stack walk per request).
        log.handle(log.makeRecord(log.name, level, __file__, 0, f"{method} {route} {status} {duration_ms}ms",
                                  (), None, extra=fields))


def install(app: Flask) -> None:
    app.after_request(_log_request)
