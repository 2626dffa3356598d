"""Timestamps: the one place that reads the clock, formats RFC 3339 out and parses it in (§1.2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

# RFC 3339 ``date-time`` (section 5.6): full-date "T" partial-time time-offset; "T" and "Z" in either case.
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII)
_PARSE_ERROR = "must be an RFC 3339 timestamp with an offset"


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
    """Parse an RFC 3339 ``date-time`` (``2025-03-01T09:00:00Z``, ``2025-03-01T10:00:00.5+01:00``) into aware
    UTC; raise ``ValueError`` for anything else: a missing offset, ISO 8601's other forms (basic
    ``20250301T090000Z``, week dates, times without seconds), impossible dates and times, leap seconds
    (Python cannot hold them). Fractions beyond microseconds are cut."""
    match = _RFC3339_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(_PARSE_ERROR)
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, zulu, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10, 11)
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    if zulu:
        offset = timedelta(0)
    else:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise ValueError(_PARSE_ERROR)
        offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes)) * (-1 if sign == "-" else 1)
    try:
        parsed = datetime(year, month, day, hour, minute, second, microsecond, tzinfo=timezone(offset))
    except ValueError as exc:  # month 13, February 30th, hour 24, second 60 ...
        raise ValueError(_PARSE_ERROR) from exc
    return parsed.astimezone(UTC)
