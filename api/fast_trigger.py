"""The common trigger without the framework: ``POST /v1/jobs/{job}/trigger`` answered in front of Flask.

Triggering is the product's hot path, and for the common request — a valid key, a plain JSON body, a job
without dedup, dependency edges or an idempotency key — Flask, werkzeug, webargs and flask-smorest cost
more CPU than the work itself (request and app contexts, routing, proxies, argument parsing, response
wrappers: about half of the request). This WSGI middleware recognises exactly that request and serves it
with the same domain code (``shared.triggers.manual.trigger_run``, the same schema, the same rendering, log
line and metrics). It never decides an error: whenever anything is unusual — another route, a query
string, no or a bad key, a missing scope, a body that is not a plain JSON object or fails the schema, an
``Idempotency-Key``, a dry run, a job that needs a transaction, a disabled job, a payload refused by the
job's schema, the per-key API rate limit being configured — it hands the untouched request (body
re-wound) to the Flask app, which answers it exactly as it always did. Nothing has been written by then:
the only write of the path is the final INSERT. A failure of that INSERT or after it is answered here in
the one error shape, as the Flask handlers would (503 for an unavailable backing service, else 500).
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from api.auth import bearer_token
from api.errors import UNAVAILABLE, UNAVAILABLE_MESSAGE, error_body
from api.gate import MAX_BODY_BYTES, may_hold_nul_or_surrogate, request_id_for
from api.metrics import record_request
from api.request_log import log_request
from api.run_render import render_trigger
from api.schemas.triggers import TriggerSchema
from shared import json_codec
from shared.apikeys import key_digest, principal_from_row
from shared.clock import utcnow
from shared.errors import SluiceError
from shared.runs.effects import Effects, apply_after_commit
from shared.triggers.manual import find_key_and_trigger_job, needs_transaction, trigger_job_of, trigger_run

log = logging.getLogger("sluice.api")

ROUTE = "/v1/jobs/<job>/trigger"  # the Flask rule, as the log line and metrics label it
SCOPE = "jobs:trigger"
_PATH = re.compile(r"/v1/jobs/([^/]+)/trigger")
_schema = TriggerSchema()
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastTrigger:
    """Wraps the Flask app's WSGI callable (``app.wsgi_app``); see the module doc."""

    def __init__(self, services: Any, inner: WsgiApp) -> None:
        self.services = services
        self.inner = inner
        # Autocommit sessions exist on PostgreSQL only; the per-key API rate limit lives in the gate.
        self.enabled = services.read_session_factory is not None and services.settings.api_rate_limit is None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.enabled or environ.get("REQUEST_METHOD") != "POST" or environ.get("QUERY_STRING"):
            return self.inner(environ, start_response)
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return self.inner(environ, start_response)
        started = time.perf_counter()
        raw = _read_body(environ)
        if raw is None:
            return self.inner(environ, start_response)
        answer = self._serve(environ, match.group(1), raw, started)
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(raw)  # Flask reads the same bytes again
            return self.inner(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        return [body]

    def _serve(self, environ: dict[str, Any], ref: str, raw: bytes,
               started: float) -> tuple[str, list[tuple[str, str]], bytes] | None:
        token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        digest = key_digest(token) if token is not None else None
        body = _plain_body(environ, raw)
        if digest is None or body is None or "HTTP_IDEMPOTENCY_KEY" in environ or body.get("dry_run"):
            return None
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        session = self.services.read_session_factory()  # autocommit: the INSERT commits itself
        try:
            try:
                row = find_key_and_trigger_job(session, digest, ref)
                principal = principal_from_row(session, None if row is None else row._mapping, utcnow())
                if row is None or principal is None or not principal.has_scope(SCOPE) or row.id is None:
                    return None
                job, has_edges = trigger_job_of(row)
                if needs_transaction(job, body, has_edges):
                    return None
            except Exception:  # e.g. the database is down: Flask answers the request as always
                return None
            effects = Effects()
            try:
                outcome = trigger_run(session, job, body, actor=principal.actor, now=utcnow(), effects=effects,
                                      has_edges=has_edges)
            except SluiceError:  # raised before the INSERT (disabled job, payload schema, …)
                return None
            apply_after_commit(effects, self.services.broker)  # autocommit: the INSERT is committed
            status, extra = (201, [("Location", f"/v1/runs/{outcome.run.id}")]) if outcome.created else (200, [])
            return self._answer(status, json_codec.dumps(render_trigger(outcome)), extra, request_id, started,
                                environ, principal.project_id)
        except UNAVAILABLE:
            log.warning("backing service unavailable", extra={"request_id": request_id})
            return self._error(503, request_id, started, environ, None)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            return self._error(500, request_id, started, environ, None)
        finally:
            session.close()

    def _error(self, code: int, request_id: str, started: float, environ: dict[str, Any],
               project_id: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
        message = UNAVAILABLE_MESSAGE if code == 503 else "Internal server error"
        body = json_codec.dumps(error_body(code, message, request_id))
        return self._answer(code, body, [], request_id, started, environ, project_id)

    @staticmethod
    def _answer(status: int, body: bytes, extra: list[tuple[str, str]], request_id: str, started: float,
                environ: dict[str, Any], project_id: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra,
                   ("X-Request-Id", request_id)]
        record_request("POST", ROUTE, status, started)
        log_request("POST", ROUTE, environ.get("PATH_INFO", ""), status, started, request_id, project_id)
        return f"{status} {_REASONS[status]}", headers, body


_REASONS = {200: "OK", 201: "CREATED", 500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE"}


def _read_body(environ: dict[str, Any]) -> bytes | None:
    """The body when its length is declared and within the limit (else Flask handles 413 and chunked
    bodies); no ``Content-Length`` and no ``Transfer-Encoding`` is an empty body."""
    declared = environ.get("CONTENT_LENGTH")
    if not declared:
        return None if environ.get("HTTP_TRANSFER_ENCODING") else b""
    try:
        length = int(declared)
    except ValueError:
        return None
    if length < 0 or length > MAX_BODY_BYTES:
        return None
    raw = environ["wsgi.input"].read(length) if length else b""
    return raw if len(raw) == length else None


def _plain_body(environ: dict[str, Any], raw: bytes) -> dict[str, Any] | None:
    """The schema-loaded body (empty → ``{}``, as the route's optional body), or ``None`` when the gate or
    the schema would have anything to say about it."""
    if not raw.strip():
        return {}
    mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if mimetype != "application/json" or may_hold_nul_or_surrogate(raw):
        return None
    try:
        parsed = json.loads(raw)
        return _schema.load(parsed) if isinstance(parsed, dict) else None
    except Exception:  # malformed, too deep, refused by the schema, …: Flask explains it to the caller
        return None
