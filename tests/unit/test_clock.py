"""shared.clock.format_ts: RFC 3339 UTC with six fractional digits, whatever the input's offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

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
