"""Timestamps: the one place that reads the clock, formats RFC 3339 out and parses it in (§1.2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

_OFFSET_RE = re.compile(r"(Z|z|[+-]\d{2}:\d{2})\Z")


def utcnow() -> datetime:
    """Current time, aware UTC. Only process edges call this; domain code receives ``now``."""
    return datetime.now(UTC)


def format_ts(value: datetime | None) -> str | None:
    """RFC 3339, UTC, ``Z``, exactly six fractional digits."""
    if value is None:
        return None
    return _format_utc(value)


# Reads render the same few timestamps again and again (a list page: ~100 per request, the same ones for
# every client of that page): a hit costs 0.06 µs against ~1 µs of formatting. Keys compare by instant
# (an aware datetime equals any other with the same UTC time, and the output is that UTC time), and a
# naive value never equals an aware one.
@lru_cache(maxsize=8192)
def _format_utc(value: datetime) -> str:
    # Values read from the database are already UTC (psycopg2 gives an equal, not identical, tzinfo).
    if value.tzinfo is not UTC and value.tzinfo != UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    # isoformat is about twice as fast as strftime (every list page formats ~100 timestamps).
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_ts(text: str) -> datetime:
    """Parse RFC 3339 with an explicit offset; raise ``ValueError`` otherwise."""
    if not isinstance(text, str) or not _OFFSET_RE.search(text) or "T" not in text.upper():
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    normalized = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        parsed = datetime.fromisoformat(normalized.replace("t", "T"))
    except ValueError as exc:
        raise ValueError("must be an RFC 3339 timestamp with an offset") from exc
    if parsed.tzinfo is None:
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    return parsed.astimezone(UTC)
