"""``GET /v1/jobs`` in front of Flask: the unfiltered list, at most one ``limit`` and one ``cursor``.

Served with the renderings this process keeps, checked against every job's row version on each request
(``api.job_page_cache``), the view's page cut and cursor, and its paging headers (``X-Next-Cursor``,
``Link``). Any other query argument or encoding, a limit or cursor the view would refuse: Flask's.
"""

from __future__ import annotations

import re

from sqlalchemy.orm import Session
from werkzeug.wsgi import get_current_url

from api.front.layer import Answer, FrontRequest
from api.job_page import CURSOR_KIND
from api.job_page_cache import RenderedJobs, read_page
from api.pagination import clamp_limit, decode_time_cursor, next_link

# One query argument: a limit the view's schema takes (1–18 decimal digits, checked ≥ 1 below) or a cursor
# in the unpadded URL-safe base64 the list writes. Anything else (percent-escapes, "+", repeats, other
# arguments) is Flask's to parse.
_ARGUMENT = re.compile(r"(limit)=([0-9]{1,18})|(cursor)=([A-Za-z0-9_-]+)")


class JobList:
    method = "GET"
    path = re.compile(r"/v1/jobs")
    rule = "/v1/jobs"
    reads_body = False

    def __init__(self) -> None:
        self.rendered = RenderedJobs()

    def serve(self, request: FrontRequest, session: Session) -> Answer | None:
        query = plain_query(request.query)
        if query is None:
            return None
        limit, cursor = query
        after = decode_time_cursor(CURSOR_KIND, cursor)  # raises on a cursor the view refuses: Flask's 400
        page = clamp_limit(limit)
        key, body, next_cursor = read_page(session, request.digest(), page=page, after=after, cache=self.rendered)
        if request.admit(session, key, "jobs:read") is None:
            return None
        if next_cursor is None:
            return 200, body, ()
        base_url = get_current_url(request.environ, strip_querystring=True)
        return 200, body, (("X-Next-Cursor", next_cursor), ("Link", next_link(base_url, [], page, next_cursor)))


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
