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


# How deep any JSON value Sluice accepts may nest (request bodies, endpoint results). Far beyond what real
# documents use, and far below what would exhaust the interpreter's stack in the code that walks them
# (schema validation, canonical encoding, JSONB encoding).
MAX_DEPTH = 128


def may_nest_deeper(text: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Cheap pre-check on JSON text: could it nest deeper than ``limit``? (Each level opens a bracket.)"""
    if isinstance(text, str):
        return text.count("[") + text.count("{") > limit
    return text.count(b"[") + text.count(b"{") > limit


def nests_deeper(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when the parsed JSON ``value`` has arrays or objects nested more than ``limit`` levels deep.

    Iterative, so it is safe whatever the depth.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
