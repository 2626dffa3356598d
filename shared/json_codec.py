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
import re
from datetime import datetime
from itertools import accumulate
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


# How deep any JSON value Sluice accepts may nest (request bodies, endpoint results). Far beyond what real
# documents use, and far below what would exhaust the interpreter's stack in the code that walks them
# (schema validation, canonical encoding, JSONB encoding).
MAX_DEPTH = 128

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nests_deeper(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON ``text`` nests arrays and objects more than ``limit`` levels deep.

    Read from the text, before parsing: the standard library's parser recurses once per level, and a
    document nested close to the interpreter's limit leaves too little stack for anything that runs
    meanwhile (a garbage collection's finalizers fail with RecursionError). Brackets inside strings do
    not count. Text that is not valid JSON may be judged either way: its callers refuse it, or keep it
    as text, in both cases.
    """
    if text.count("[") + text.count("{") <= limit:  # each level opens a bracket: most texts stop here
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit
