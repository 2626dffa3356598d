"""shared.clock.format_ts: RFC 3339 UTC with six fractional digits, whatever the input's offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.clock import format_ts, parse_ts


def test_any_offset_renders_as_the_same_utc_instant() -> None:
    instant = datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=UTC)
    paris = instant.astimezone(timezone(timedelta(hours=2)))
    driver_utc = instant.replace(tzinfo=timezone(timedelta(0)))  # what psycopg2 returns
    assert format_ts(instant) == format_ts(paris) == format_ts(driver_utc) == "2026-03-29T01:30:00.000005Z"
    assert format_ts(paris) == "2026-03-29T01:30:00.000005Z"  # repeated: served from the cache, same text


def test_naive_is_utc_and_none_is_none() -> None:
    assert format_ts(datetime(2026, 1, 1, 12, 0)) == "2026-01-01T12:00:00.000000Z"
    assert format_ts(datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))) == "2026-01-01T17:00:00.000000Z"
    assert format_ts(None) is None
    assert parse_ts(format_ts(datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) or "") == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-03-01T09:00:00Z", datetime(2025, 3, 1, 9, tzinfo=UTC)),
    ("2025-03-01t09:00:00z", datetime(2025, 3, 1, 9, tzinfo=UTC)),
    ("2025-03-01T10:30:00+01:30", datetime(2025, 3, 1, 9, tzinfo=UTC)),
    ("2025-03-01T04:00:00-05:00", datetime(2025, 3, 1, 9, tzinfo=UTC)),
    ("2025-03-01T09:00:00.5Z", datetime(2025, 3, 1, 9, 0, 0, 500_000, tzinfo=UTC)),
    ("2025-03-01T09:00:00.123456789Z", datetime(2025, 3, 1, 9, 0, 0, 123_456, tzinfo=UTC)),
    ("2024-02-29T23:59:59-00:00", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
])
def test_rfc_3339_date_times_parse(text: str, expected: datetime) -> None:
    assert parse_ts(text) == expected and parse_ts(text).tzinfo is UTC


@pytest.mark.parametrize("text", [
    "20250301T090000Z",  # ISO 8601 basic format
    "2025-W09-6T09:00:00Z",  # ISO week date
    "2025-060T09:00:00Z",  # ISO ordinal date
    "2025-03-01T09:00Z",  # no seconds
    "2025-03-01T09Z",
    "2025-03-01T09:00:00",  # no offset
    "2025-03-01 09:00:00Z",  # a space is not RFC 3339's separator
    "2025-03-01T09:00:00+0100", "2025-03-01T09:00:00+01", "2025-03-01T09:00:00+24:00", "2025-03-01T09:00:00+01:60",
    "2025-03-01T09:00:00.Z", "2025-03-01T09:00:00,5Z",
    "2025-13-01T09:00:00Z", "2025-02-29T09:00:00Z", "2025-03-01T24:00:00Z", "2025-03-01T09:60:00Z",
    "2025-03-01T09:00:60Z",  # a leap second: valid RFC 3339, but no datetime can hold it
    "+2025-03-01T09:00:00Z", "2025-3-1T09:00:00Z", "２０２５-03-01T09:00:00Z", " 2025-03-01T09:00:00Z",
    "2025-03-01T09:00:00Z\n", "",
])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_ts(text)
