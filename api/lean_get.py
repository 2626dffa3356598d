"""What the lean read paths in front of Flask share (``api.fast_list``, ``api.fast_job_get``).

Each is a WSGI middleware around the Flask app's WSGI callable. It serves one GET it fully recognises
(a route, a well-formed query, a valid key with the scope, a row found) with the same domain code, the
same body and headers (``X-Request-Id``), the same log line and metrics, and hands anything else — an
unusual query, no or a bad key, a missing scope, a missing job, a failed read, the per-key API rate
limit being configured — to the Flask app untouched, which answers it exactly as it always did. A lean
path never decides an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from api.auth import bearer_token
from api.gate import request_id_for
from api.metrics import record_request
from api.request_log import log_request
from shared.apikeys import Principal, key_digest, principal_from_row
from shared.clock import utcnow

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[list[tuple[str, str]], bytes]  # 200's headers and body
T = TypeVar("T")


class LeanGet:
    """Subclasses say which paths they look at (``handles``) and answer them (``serve``) or decline."""

    route = ""  # the Flask rule, as the log line and metrics label it

    def __init__(self, services: Any, inner: WsgiApp) -> None:
        self.services = services
        self.inner = inner
        # Autocommit read sessions exist on PostgreSQL only; the per-key API rate limit lives in the gate.
        self.enabled = services.read_session_factory is not None and services.settings.api_rate_limit is None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (not self.enabled or environ.get("REQUEST_METHOD") != "GET"
                or not self.handles(environ.get("PATH_INFO", ""))):
            return self.inner(environ, start_response)
        answer = self.serve(environ, time.perf_counter())
        if answer is None:
            return self.inner(environ, start_response)
        headers, body = answer
        start_response("200 OK", headers)
        return [body]

    def handles(self, path: str) -> bool:
        raise NotImplementedError

    def serve(self, environ: dict[str, Any], started: float) -> Answer | None:
        """The answer, or ``None`` to let Flask answer."""
        raise NotImplementedError

    @staticmethod
    def digest(environ: dict[str, Any]) -> str | None:
        """The stored digest of the request's bearer key, ``None`` without a key shaped like one."""
        token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        return key_digest(token) if token is not None else None

    def read_as(self, scope: str, read: Callable[[Session], tuple[Mapping[str, Any] | None, T]]
                ) -> tuple[Principal, T] | None:
        """Run ``read`` on an autocommit session (as Flask's GETs): it returns the key's row (``KEY_FIELDS``,
        ``None`` when unknown) and the data read with it. The key's principal and the data when the key is
        valid and holds ``scope``; ``None`` for Flask to answer, also when the read fails (e.g. the database
        is down)."""
        session = self.services.read_session_factory()
        try:
            key, data = read(session)
            principal = principal_from_row(session, key, utcnow())
        except Exception:
            return None
        finally:
            session.close()
        if principal is None or not principal.has_scope(scope):
            return None
        return principal, data

    def ok(self, environ: dict[str, Any], started: float, body: bytes, project_id: str,
           extra: Sequence[tuple[str, str]] = ()) -> Answer:
        """The 200 answer with ``body`` (JSON), counted and logged as the Flask path would."""
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra,
                   ("X-Request-Id", request_id)]
        record_request("GET", self.route, 200, started)
        log_request("GET", self.route, environ.get("PATH_INFO", ""), 200, started, request_id, project_id)
        return headers, body
