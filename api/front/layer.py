"""The front layer: one small WSGI layer in front of Flask that serves the hottest requests or declines them.

For the common trigger, the plain jobs list and a job read, Flask, werkzeug, webargs and flask-smorest
(contexts, routing, proxies, argument parsing, response wrappers) cost about as much CPU as the work
itself. Each ``Route`` recognises its request and serves it with the same domain code, authentication
(``api.access``), rendering and headers as Flask's view; this layer matches the route, reads the body,
opens the session, frames the answer (status line, ``Content-Type``, ``Content-Length``, the route's
headers, ``X-Request-Id``) and writes the same log line and metrics as Flask's path.

A route declines — it returns ``None``, or anything raises before it writes — whenever anything is
unusual: a query or body it does not fully understand, no or a bad key, a missing scope, a refused
rate-limit permit, a missing job, a failed read. The untouched request (body re-wound) then goes to Flask,
which answers it exactly as it always does, so every error a client can cause is Flask's. The one answer
this layer decides itself is a failure once the route has written (``FrontRequest.writing``): the write
may have happened, so the request must not run again; it is answered in the one error shape as Flask's
handlers would (503 for an unavailable backing service, else 500).
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy.orm import Session
from werkzeug.http import HTTP_STATUS_CODES

from api.access import UNLIMITED, Access, Permit, presented_digest
from api.body import MAX_BODY_BYTES
from api.context import Services
from api.errors import error_body, unexpected_error
from api.gate import request_id_for
from api.metrics import record_request
from api.request_log import log_request
from shared import json_codec
from shared.apikeys import Principal
from shared.clock import utcnow

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[int, bytes, Sequence[tuple[str, str]]]  # status, JSON body, the route's own headers


class FrontRequest:
    """One request a route is looking at, and what the layer needs to answer or decline it."""

    def __init__(self, environ: dict[str, Any], match: re.Match[str], body: bytes, access: Access) -> None:
        self.environ = environ
        self.match = match
        self.body = body
        self.principal: Principal | None = None  # once the key is known (the log line's project)
        self.permit: Permit = UNLIMITED
        self.wrote = False
        self._access = access
        self._request_id: str | None = None

    @property
    def query(self) -> str:
        return self.environ.get("QUERY_STRING", "")  # type: ignore[no-any-return]

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = request_id_for(self.environ.get("HTTP_X_REQUEST_ID", ""))
        return self._request_id

    def digest(self) -> str:
        """The stored digest of the bearer key; raises (the layer declines) without a key shaped like one."""
        return presented_digest(self.environ.get("HTTP_AUTHORIZATION", ""))

    def admit(self, session: Session, key_row: Any, scope: str) -> Principal | None:
        """The caller's principal when the key is valid, holds ``scope`` and gets a rate-limit permit (the
        same decisions as Flask's, ``api.access``); ``None`` for the route to decline."""
        now = utcnow()
        self.principal = self._access.identify(session, key_row, now)
        self.permit = self._access.permit(self.principal, scope, now)
        return None if self.permit.refusal is not None else self.principal

    def writing(self) -> None:
        """From here on the route writes: a failure is answered here, never handed to Flask."""
        self.wrote = True


class Route(Protocol):
    method: str
    path: re.Pattern[str]  # matched in full against PATH_INFO
    rule: str  # the Flask rule, as the log line and metrics label the request
    reads_body: bool

    def serve(self, request: FrontRequest, session: Session) -> Answer | None: ...


class FrontLayer:
    """Wraps the Flask app's WSGI callable (``app.wsgi_app``); see the module doc."""

    def __init__(self, services: Services, routes: Sequence[Route], inner: WsgiApp) -> None:
        self.services = services
        self.routes = tuple(routes)
        self.inner = inner  # Flask
        self._by_method: dict[str, list[Route]] = {}
        for route in routes:
            self._by_method.setdefault(route.method, []).append(route)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        for route in self._by_method.get(environ.get("REQUEST_METHOD", ""), ()):
            match = route.path.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                return self._serve(route, match, environ, start_response)
        return self.inner(environ, start_response)

    def _serve(self, route: Route, match: re.Match[str], environ: dict[str, Any],
               start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        body = read_body(environ) if route.reads_body else b""
        if body is None:
            return self.inner(environ, start_response)
        request = FrontRequest(environ, match, body, self.services.access)
        answer = self._answer(route, request)
        if answer is None:
            self.services.access.give_back(request.permit)  # Flask counts the request itself
            if route.reads_body:
                environ["wsgi.input"] = io.BytesIO(body)  # Flask reads the same bytes again
            return self.inner(environ, start_response)
        status, content, extra = answer
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(content))), *extra,
                   ("X-Request-Id", request.request_id)]
        record_request(route.method, route.rule, status, started)
        log_request(route.method, route.rule, environ.get("PATH_INFO", ""), status, started, request.request_id,
                    None if request.principal is None else request.principal.project_id)
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", headers)
        return [content]

    def _answer(self, route: Route, request: FrontRequest) -> Answer | None:
        session = self.services.read_session_factory()  # autocommit: a route's one write commits itself
        try:
            return route.serve(request, session)
        except Exception as exc:
            if not request.wrote:  # e.g. a bad key, or the database is down: Flask answers as always
                return None
            code, message = unexpected_error(exc, request.request_id)
            return code, json_codec.dumps(error_body(code, message, request.request_id)), ()
        finally:
            session.close()


def read_body(environ: dict[str, Any]) -> bytes | None:
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
    return raw if len(raw) == length else None  # type: ignore[no-any-return]
