"""The plain jobs list without the framework: ``GET /v1/jobs`` (only ``limit`` and ``cursor``) answered in
front of Flask (a lean path, ``api.lean_get``).

Once the page is rendered by its statement (``api.job_page``), Flask, werkzeug, webargs and flask-smorest
are most of a list request's CPU (contexts, routing, proxies, argument parsing, response wrappers,
teardown). Like ``api.fast_trigger``, this WSGI middleware recognises the common request — a valid key
with ``jobs:read`` and a query of at most one well-formed ``limit`` and one well-formed ``cursor`` — and
serves it with the same rendering (kept per process and checked against each job's row version on every
request, ``api.job_page_cache``), the view's page cut and cursor, the same headers (``X-Next-Cursor``,
``Link``, ``X-Request-Id``), log line and metrics. It never decides an error:
anything else — another method or path, any other query argument or encoding, a limit or cursor the view
would refuse, no or a bad key, a missing scope, a failed read, the per-key API rate limit being
configured — goes to the Flask app untouched, which answers it exactly as it always did. The path only
reads (apart from the key's throttled ``last_used_at``, which Flask would write the same way).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session
from werkzeug.wsgi import get_current_url

from api.job_page import CURSOR_KIND
from api.job_page_cache import RenderedJobs, read_page
from api.lean_get import Answer, LeanGet, WsgiApp
from api.pagination import clamp_limit, decode_time_cursor, next_link
from shared.errors import SluiceError

PATH = "/v1/jobs"
SCOPE = "jobs:read"
# One query argument: a limit the view's schema takes (1–18 decimal digits, checked ≥ 1 below) or a cursor
# in the unpadded URL-safe base64 the list writes. Anything else (percent-escapes, "+", repeats, other
# arguments) is Flask's to parse.
_ARGUMENT = re.compile(r"(limit)=([0-9]{1,18})|(cursor)=([A-Za-z0-9_-]+)")


class FastJobList(LeanGet):
    """Wraps the Flask app's WSGI callable (``app.wsgi_app``); see the module doc."""

    route = PATH  # the Flask rule

    def __init__(self, services: Any, inner: WsgiApp) -> None:
        super().__init__(services, inner)
        self.rendered = RenderedJobs()

    def handles(self, path: str) -> bool:
        return path == PATH

    def serve(self, environ: dict[str, Any], started: float) -> Answer | None:
        query = plain_query(environ.get("QUERY_STRING", ""))
        digest = self.digest(environ)
        if query is None or digest is None:
            return None
        limit, cursor = query
        try:
            after = decode_time_cursor(CURSOR_KIND, cursor)
        except SluiceError:  # the view's 400
            return None
        page = clamp_limit(limit)

        def read(session: Session) -> tuple[dict[str, Any] | None, tuple[bytes, str | None]]:
            key, body, next_cursor = read_page(session, digest, page=page, after=after, cache=self.rendered)
            return key, (body, next_cursor)

        allowed = self.read_as(SCOPE, read)
        if allowed is None:
            return None
        principal, (body, next_cursor) = allowed
        paging: list[tuple[str, str]] = []
        if next_cursor is not None:
            base_url = get_current_url(environ, strip_querystring=True)
            paging = [("X-Next-Cursor", next_cursor), ("Link", next_link(base_url, [], page, next_cursor))]
        return self.ok(environ, started, body, principal.project_id, paging)


def plain_query(query_string: str) -> tuple[int | None, str | None] | None:
    """(limit, cursor) of a query holding nothing but at most one valid each, else ``None``."""
    limit: int | None = None
    cursor: str | None = None
    if not query_string:
        return limit, cursor
    for argument in query_string.split("&"):
        match = _ARGUMENT.fullmatch(argument)
        if match is None:
            return None
        if match.group(1):
            if limit is not None or int(match.group(2)) < 1:
                return None
            limit = int(match.group(2))
        else:
            if cursor is not None:
                return None
            cursor = match.group(4)
    return limit, cursor
