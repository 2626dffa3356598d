"""JSON encoding for hot paths: orjson (C, ~5× the standard library on a page of 50 jobs), with the
standard library for the values orjson refuses.

orjson writes UTF-8 without ``\\uXXXX`` escapes of non-ASCII characters (valid JSON either way) and
refuses integers beyond 64 bits, which a user's payload may hold; those bodies are encoded by ``json``.
NaN and Infinity never reach here: payloads refuse them (``shared.triggers.payloads``) and PostgreSQL's JSONB
cannot store them. Decoding stays with the standard library: orjson reads integers beyond 64 bits as
floats, silently losing digits.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson


def _datetime_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()  # what orjson writes for a datetime
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """Compact JSON bytes of ``value`` (keys in insertion order; datetimes as RFC 3339 / isoformat)."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, default=_datetime_text, separators=(",", ":"), ensure_ascii=False).encode()
