"""Keyset pagination for every list endpoint (CONTRACT §1.6).

Cursors are opaque base64 of ``[kind, created_at, id]`` (or ``[kind, version]`` for versions). A cursor
from another list endpoint or one that does not decode is a 400.
"""

from __future__ import annotations

import base64
import json
from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from itertools import accumulate
from typing import Any
from urllib.parse import urlencode

from flask import Response, request

from shared import json_codec
from shared.clock import format_ts, parse_ts
from shared.errors import BadRequest
from shared.json_codec import nests_deeper

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# A page ends early, with a cursor, rather than grow past this many bytes (runs carry payloads and results
# of up to 1 MiB each, jobs schemas): a page always holds at least one item.
PAGE_MAX_BYTES = 4 * 1024 * 1024


def items_within(sizes: Iterable[int], max_bytes: int = PAGE_MAX_BYTES) -> int:
    """How many leading items of these ``sizes`` a page holds: each one while the items before it stay
    under ``max_bytes`` (so at least one)."""
    totals = list(accumulate(sizes))  # totals[i]: the bytes of items 0..i
    return min(bisect_left(totals, max_bytes) + 1, len(totals))


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    return min(limit, MAX_LIMIT)


def encode_cursor(kind: str, *position: Any) -> str:
    parts = [kind, *[format_ts(p) if isinstance(p, datetime) else p for p in position]]
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None) -> list[Any] | None:
    """The position after which the next page starts, or ``None`` without a cursor."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode()).decode()
        if nests_deeper(text, 1):  # a cursor is a flat list; a deep one would exhaust the parser's stack
            raise ValueError
        parts = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("cursor: malformed cursor") from exc
    if not isinstance(parts, list) or not parts or parts[0] != kind:
        raise BadRequest("cursor: not a cursor of this list")
    if any(isinstance(part, str) and "\x00" in part for part in parts):
        raise BadRequest("cursor: malformed cursor")  # PostgreSQL text cannot hold NUL
    return parts[1:]


def decode_time_cursor(kind: str, cursor: str | None) -> tuple[datetime, str] | None:
    position = decode_cursor(kind, cursor)
    if position is None:
        return None
    try:
        created_at, row_id = position
        if not isinstance(row_id, str):
            raise ValueError
        return parse_ts(created_at), row_id
    except (ValueError, TypeError) as exc:
        raise BadRequest("cursor: malformed cursor") from exc


def json_array(encoded: list[bytes]) -> bytes:
    """The JSON array of items already encoded one by one (each measured for the page's byte budget)."""
    return b"[" + b",".join(encoded) + b"]"


def paged_response(body: bytes, next_cursor: str | None, limit: int) -> Response:
    """A page (``body``: its JSON array) with ``X-Next-Cursor`` and ``Link`` when more items exist."""
    response = Response(body, status=200, mimetype="application/json")
    if next_cursor is not None:
        args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("cursor", "limit")]
        response.headers["X-Next-Cursor"] = next_cursor
        response.headers["Link"] = next_link(request.base_url, args, limit, next_cursor)
    return response


def next_link(base_url: str, args: list[tuple[str, str]], limit: int, next_cursor: str) -> str:
    """The ``Link`` header to the next page: the request's other query ``args``, then limit and cursor."""
    query = urlencode([*args, ("limit", str(limit)), ("cursor", next_cursor)])
    return f'<{base_url}?{query}>; rel="next"'


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json_codec.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
