"""What a 2xx response becomes (CONTRACT §5.3): the run's ``result``.

The body parsed as JSON; a body that is not JSON becomes a JSON string (invalid UTF-8 replaced); no body
is ``null``. At most 1 MiB is read: a longer body is kept as a JSON string of its first 1 MiB and the
attempt reports ``result_truncated: true``.

PostgreSQL's JSONB refuses two things JSON parsers accept: U+0000 inside strings and the non-standard
constants ``NaN``/``Infinity`` (or numbers too large for a double). A body holding U+0000 keeps its
structure with U+0000 replaced by U+FFFD; a body using non-finite numbers, or nesting arrays and objects
more than 128 levels deep, is kept as a JSON string.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shared.json_codec import nests_deeper
from shared.runs.attempts import clean_text
from worker.call_result import CallResult

MAX_RESULT_BYTES = 1 << 20


class _NotStorable(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotStorable(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStorable(text)
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): _clean(item) for key, item in value.items()}
    return value


def result_of(call: CallResult) -> tuple[Any, bool]:
    """``(result, result_truncated)`` for a successful call."""
    body = call.body
    if call.truncated or len(body) > MAX_RESULT_BYTES:
        return clean_text(body[:MAX_RESULT_BYTES].decode("utf-8", errors="replace")), True
    if not body:
        return None, False
    text = body.decode("utf-8", errors="replace")
    if nests_deeper(text):
        return clean_text(text), False  # deeper than anything Sluice stores as JSON: kept as text
    try:
        parsed = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError:  # also covers integers over Python's digit limit
        return clean_text(text), False
    return (_clean(parsed) if "\x00" in text or "\\u0000" in text else parsed), False
