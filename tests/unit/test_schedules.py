"""The cron dialect (§6.1), DST rules (§6.2), tick keys (§6.3), missed ticks (§6.4) and windows (§5.7).

Pure: every instant is explicit. Reference dates: America/New_York springs forward on 2025-03-09 at
07:00Z (02:00 EST → 03:00 EDT) and falls back on 2025-11-02 at 06:00Z (02:00 EDT → 01:00 EST);
Europe/Berlin on 2025-03-30 at 01:00Z (02:00 CET → 03:00 CEST) and 2025-10-26 at 01:00Z (03:00 CEST →
02:00 CET).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.schedules.cron import (
    CronError,
    CronSpec,
    is_minute_open,
    is_valid_timezone,
    next_fire_time,
    next_open_minute,
    parse_cron,
    previous_fire_time,
    tick_key,
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"
MINUTE = timedelta(minutes=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ticks(expr: str, tz: str, after: str, count: int) -> list[str]:
    spec, out, at = parse_cron(expr), [], utc(after)
    for _ in range(count):
        at = next_fire_time(spec, tz, at)
        out.append(at.strftime("%Y-%m-%dT%H:%MZ"))
    return out


# --- parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "field", "values"),
    [
        ("*/15 * * * *", "minutes", (0, 15, 30, 45)),
        ("10-20/5 * * * *", "minutes", (10, 15, 20)),
        ("5/20 * * * *", "minutes", (5, 25, 45)),
        ("0 0 10/7 * *", "days", (10, 17, 24, 31)),  # a/n is a-<max>/n in every field
        ("0 0 * feb/3 *", "months", (2, 5, 8, 11)),
        ("0 0 * * 1/2", "weekdays", (0, 1, 3, 5)),  # 1-7/2: 7 is Sunday
        ("1-3,7,9-10 * * * *", "minutes", (1, 2, 3, 7, 9, 10)),
        ("0 */6 * * *", "hours", (0, 6, 12, 18)),
        ("0 0 1,15 * *", "days", (1, 15)),
        ("0 0 * jan-mar,DEC *", "months", (1, 2, 3, 12)),
        ("0 0 * */4 *", "months", (1, 5, 9)),
        ("0 0 * * Mon-FRI", "weekdays", (1, 2, 3, 4, 5)),
        ("0 0 * * 5-7", "weekdays", (0, 5, 6)),
        ("0 0 * * 1-7/2", "weekdays", (0, 1, 3, 5)),
        ("0 0 * * 0-7", "weekdays", (0, 1, 2, 3, 4, 5, 6)),
        ("0 0 * * sat,sun", "weekdays", (0, 6)),
        ("  07\t08  *  *  * ", "minutes", (7,)),
    ],
)
def test_parse_values(expr: str, field: str, values: tuple[int, ...]) -> None:
    assert getattr(parse_cron(expr), field) == values


@pytest.mark.parametrize("expr", ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN", "0 0 * * 0,7"])
def test_sunday_is_0_and_7(expr: str) -> None:
    spec = parse_cron(expr)
    assert spec.weekdays == (0,)
    assert spec.matches(datetime(2025, 3, 9))  # a Sunday
    assert not spec.matches(datetime(2025, 3, 10))


@pytest.mark.parametrize(
    ("descriptor", "expansion"),
    [("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@weekly", "0 0 * * 0"),
     ("@monthly", "0 0 1 * *"), ("@yearly", "0 0 1 1 *")],
)
def test_descriptors(descriptor: str, expansion: str) -> None:
    spec, expanded = parse_cron(descriptor), parse_cron(expansion)
    assert (spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays) == (
        expanded.minutes, expanded.hours, expanded.days, expanded.months, expanded.weekdays)
    assert (spec.dom_wildcard, spec.dow_wildcard) == (expanded.dom_wildcard, expanded.dow_wildcard)


@pytest.mark.parametrize(
    "expr",
    [
        "", "   ", "* * * *", "* * * * * *", "0 0 * * * * 2025",  # field count
        "0 0 ? * 1", "0 0 L * *", "0 0 15W * *", "0 0 LW * *", "0 0 * * 5#3", "0 0 * * 5L",  # Quartz
        "60 * * * *", "61 * * * *", "* 24 * * *", "0 0 0 * *", "0 0 32 * *", "0 0 * 0 *", "0 0 * 13 *",
        "0 0 * * 8", "-1 * * * *",  # out of range
        "*/0 * * * *", "0-10/0 * * * *",  # step 0
        "5-1 * * * *", "0 0 * * fri-mon", "0 0 * dec-jan *",  # reversed
        "@annually", "@midnight", "@reboot", "@every 5m", "@daily 0", "@",  # other descriptors
        "jan * * * *", "0 0 mon * *", "0 0 * * monday", "0 0 * january *", "0 0 * * 1/mon",  # names
        "1,,2 * * * *", "1, * * * *", ",1 * * * *", "1-2-3 * * * *", "*/ * * * *", "**/2 * * * *",
        "1.5 * * * *", "1- * * * *", "*-5 * * * *", "*/2/3 * * * *", "０ * * * *", "² * * * *",
    ],
)
def test_refusals(expr: str) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(expr)
    assert str(caught.value) == f'invalid expression "{expr}"'


def test_refusal_message_matches_contract() -> None:
    with pytest.raises(CronError, match=r'^invalid expression "61 \* \* \* \*"$'):
        parse_cron("61 * * * *")


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 feb *", "0 0 30-31 2 *", "0 0 31 4,6,9,11 *",
                                  "0 0 31 apr-jun/2 *"])
def test_never_matching(expr: str) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(expr)
    assert str(caught.value) == "expression never matches"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("expr", ["0 0 29 2 *", "0 0 30 2 1", "0 0 31 1-2 *", "0 0 */30 2 *"])
def test_rarely_but_really_matching(expr: str) -> None:
    assert isinstance(parse_cron(expr), CronSpec)


# --- day fields --------------------------------------------------------------------------------------


def test_both_day_fields_restricted_is_or() -> None:
    spec = parse_cron("0 0 13 * 5")  # the 13th, or any Friday
    assert spec.matches(datetime(2025, 6, 13))  # Friday the 13th
    assert spec.matches(datetime(2025, 6, 6))  # a Friday
    assert spec.matches(datetime(2025, 7, 13))  # a Sunday, the 13th
    assert not spec.matches(datetime(2025, 6, 7))


def test_one_day_field_star_means_only_the_other_counts() -> None:
    dom_only, dow_only = parse_cron("0 0 13 * *"), parse_cron("0 0 * * 5")
    assert dom_only.matches(datetime(2025, 7, 13)) and not dom_only.matches(datetime(2025, 6, 6))
    assert dow_only.matches(datetime(2025, 6, 6)) and not dow_only.matches(datetime(2025, 7, 13))


def test_step_star_in_day_field_is_a_wildcard_as_in_vixie() -> None:
    spec = parse_cron("0 0 */2 * 1")  # odd-numbered days that are Mondays (AND, not OR)
    assert spec.dom_wildcard and not spec.dow_wildcard
    assert spec.matches(datetime(2025, 3, 3))  # Monday the 3rd
    assert not spec.matches(datetime(2025, 3, 10))  # Monday the 10th
    assert not spec.matches(datetime(2025, 3, 5))  # Wednesday the 5th
    assert parse_cron("0 0 10,* * 2").dom_wildcard and parse_cron("0 0 *,10 * 2").dom_wildcard


def test_matches_checks_every_field() -> None:
    spec = parse_cron("30 9 * jun *")
    assert spec.matches(datetime(2025, 6, 2, 9, 30, 59))
    assert not spec.matches(datetime(2025, 6, 2, 9, 31))
    assert not spec.matches(datetime(2025, 6, 2, 10, 30))
    assert not spec.matches(datetime(2025, 7, 2, 9, 30))


# --- next / previous across calendar edges -----------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("0 0 1 * *", "2025-12-31T23:59", "2026-01-01T00:00"),
        ("59 23 31 12 *", "2025-12-31T23:59", "2026-12-31T23:59"),
        ("0 0 31 * *", "2025-04-01T00:00", "2025-05-31T00:00"),
        ("0 12 * * *", "2025-01-31T12:00", "2025-02-01T12:00"),
        ("0 0 29 2 *", "2025-03-01T00:00", "2028-02-29T00:00"),
        ("0 0 29 2 *", "2097-01-01T00:00", "2104-02-29T00:00"),  # 2100 is not a leap year
        ("0 0 28-31 2 *", "2100-02-28T00:00", "2101-02-28T00:00"),
        ("* * * * *", "2025-06-01T10:00:59.999999", "2025-06-01T10:01"),
        ("*/5 * * * *", "2025-06-01T10:00", "2025-06-01T10:05"),
        ("0 9 * * mon-fri", "2025-06-06T09:00", "2025-06-09T09:00"),
        ("0 0 13 * 5", "2025-06-06T00:00", "2025-06-13T00:00"),
        ("@yearly", "2025-01-01T00:00", "2026-01-01T00:00"),
    ],
)
def test_next_and_previous_in_utc(expr: str, after: str, expected: str) -> None:
    spec = parse_cron(expr)
    tick = next_fire_time(spec, "UTC", utc(after))
    assert tick == utc(expected) and tick.tzinfo is UTC
    assert previous_fire_time(spec, "UTC", tick) == tick
    earlier = previous_fire_time(spec, "UTC", tick - timedelta(microseconds=1), horizon_years=10)
    assert earlier is not None and earlier <= utc(after)


@pytest.mark.parametrize(
    ("expr", "at", "expected"),
    [
        ("0 0 1 * *", "2026-01-01T00:00:00", "2026-01-01T00:00"),
        ("0 0 1 * *", "2025-12-31T23:59:59", "2025-12-01T00:00"),
        ("59 23 31 12 *", "2026-06-01T00:00", "2025-12-31T23:59"),
        ("0 0 31 * *", "2025-05-30T00:00", "2025-03-31T00:00"),
        ("0 0 29 2 *", "2027-06-01T00:00", "2024-02-29T00:00"),
        ("*/7 * * * *", "2025-05-31T23:58", "2025-05-31T23:56"),
    ],
)
def test_previous_fire_time(expr: str, at: str, expected: str) -> None:
    assert previous_fire_time(parse_cron(expr), "UTC", utc(at)) == utc(expected)


def test_previous_fire_time_horizon() -> None:
    spec = parse_cron("0 0 29 2 *")
    assert previous_fire_time(spec, "UTC", utc("2103-06-01T00:00")) is None
    assert previous_fire_time(spec, "UTC", utc("2103-06-01T00:00"), horizon_years=10) == utc("2096-02-29T00:00")


def test_local_zone_without_dst() -> None:
    assert ticks("30 9 * * *", "Asia/Kolkata", "2025-06-01T00:00", 2) == ["2025-06-01T04:00Z", "2025-06-02T04:00Z"]


def test_instants_in_other_zones_are_accepted_and_naive_refused() -> None:
    spec = parse_cron("0 * * * *")
    paris = datetime(2025, 6, 1, 12, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert next_fire_time(spec, "UTC", paris) == utc("2025-06-01T11:00")
    for call in (next_fire_time, previous_fire_time, is_minute_open, next_open_minute):
        with pytest.raises(ValueError, match="timezone-aware"):
            call(spec, "UTC", datetime(2025, 6, 1))
    with pytest.raises(ValueError, match='unknown time zone "Mars/Base"'):
        next_fire_time(spec, "Mars/Base", paris)


# --- DST (§6.2) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "expr", "after", "expected"),
    [
        # New York, spring forward: 02:30 does not exist on 2025-03-09 → 03:00 EDT.
        (NY, "30 2 * * *", "2025-03-08T00:00", ["2025-03-08T07:30Z", "2025-03-09T07:00Z", "2025-03-10T06:30Z"]),
        (NY, "30 1 * * *", "2025-03-08T00:00", ["2025-03-08T06:30Z", "2025-03-09T06:30Z", "2025-03-10T05:30Z"]),
        (NY, "0 * * * *", "2025-03-09T05:30", ["2025-03-09T06:00Z", "2025-03-09T07:00Z", "2025-03-09T08:00Z"]),
        # New York, fall back: 01:00–01:59 occurs twice on 2025-11-02; only the EDT pass fires.
        (NY, "30 2 * * *", "2025-11-01T00:00", ["2025-11-01T06:30Z", "2025-11-02T07:30Z", "2025-11-03T07:30Z"]),
        (NY, "30 1 * * *", "2025-11-01T00:00", ["2025-11-01T05:30Z", "2025-11-02T05:30Z", "2025-11-03T06:30Z"]),
        (NY, "0 * * * *", "2025-11-02T03:30", ["2025-11-02T04:00Z", "2025-11-02T05:00Z", "2025-11-02T07:00Z"]),
        # Berlin, spring forward: 02:00–02:59 does not exist on 2025-03-30 → 03:00 CEST = 01:00Z.
        (BERLIN, "30 2 * * *", "2025-03-29T00:00",
         ["2025-03-29T01:30Z", "2025-03-30T01:00Z", "2025-03-31T00:30Z"]),
        (BERLIN, "30 1 * * *", "2025-03-29T00:00",
         ["2025-03-29T00:30Z", "2025-03-30T00:30Z", "2025-03-30T23:30Z"]),
        (BERLIN, "0 * * * *", "2025-03-29T23:30", ["2025-03-30T00:00Z", "2025-03-30T01:00Z", "2025-03-30T02:00Z"]),
        # Berlin, fall back: 02:00–02:59 occurs twice on 2025-10-26; only the CEST pass fires.
        (BERLIN, "30 2 * * *", "2025-10-25T00:00",
         ["2025-10-25T00:30Z", "2025-10-26T00:30Z", "2025-10-27T01:30Z"]),
        (BERLIN, "30 1 * * *", "2025-10-25T00:00",
         ["2025-10-25T23:30Z", "2025-10-27T00:30Z", "2025-10-28T00:30Z"]),
        (BERLIN, "0 * * * *", "2025-10-25T22:30", ["2025-10-25T23:00Z", "2025-10-26T00:00Z", "2025-10-26T02:00Z"]),
    ],
)
def test_dst_ticks(tz: str, expr: str, after: str, expected: list[str]) -> None:
    assert ticks(expr, tz, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("tz", "expr", "after", "expected"),
    [
        # 02:00, 02:10 … 02:50 are all skipped: one tick at the gap's end.
        (NY, "*/10 2 * * *", "2025-03-09T06:00", ["2025-03-09T07:00Z", "2025-03-10T06:00Z"]),
        # …and 03:00 itself matches too: still one tick, then 03:30 EDT.
        (NY, "0,30 2,3 * * *", "2025-03-09T06:00", ["2025-03-09T07:00Z", "2025-03-09T07:30Z"]),
        (BERLIN, "0,15 2-3 * * *", "2025-03-30T00:00", ["2025-03-30T01:00Z", "2025-03-30T01:15Z",
                                                        "2025-03-31T00:00Z"]),
        (NY, "* * * * *", "2025-03-09T06:58", ["2025-03-09T06:59Z", "2025-03-09T07:00Z", "2025-03-09T07:01Z"]),
    ],
)
def test_skipped_times_collapse_into_one_tick(tz: str, expr: str, after: str, expected: list[str]) -> None:
    assert ticks(expr, tz, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("tz", "expr", "at", "expected"),
    [
        (NY, "30 2 * * *", "2025-03-09T07:00", "2025-03-09T07:00"),  # the collapsed tick itself
        (NY, "30 2 * * *", "2025-03-09T06:59:59", "2025-03-08T07:30"),
        (NY, "45 1 * * *", "2025-11-02T06:15", "2025-11-02T05:45"),  # in the EST pass: EDT 01:45 is past
        (NY, "0 * * * *", "2025-11-02T06:30", "2025-11-02T05:00"),  # the repeated 01:00 never fires
        (NY, "0 * * * *", "2025-11-02T06:59", "2025-11-02T05:00"),
        (NY, "0 2 * * *", "2025-11-02T06:59", "2025-11-01T06:00"),
        (BERLIN, "30 2 * * *", "2025-10-26T01:45", "2025-10-26T00:30"),
        (BERLIN, "30 2 * * *", "2025-03-30T01:00", "2025-03-30T01:00"),
    ],
)
def test_previous_fire_time_across_dst(tz: str, expr: str, at: str, expected: str) -> None:
    assert previous_fire_time(parse_cron(expr), tz, utc(at)) == utc(expected)


# --- execution windows (§5.7) ------------------------------------------------------------------------

BUSINESS = "* 9-17 * * 1-5"


@pytest.mark.parametrize(
    ("at", "is_open"),
    [
        ("2025-03-10T13:00", True),  # Monday 09:00 EDT
        ("2025-03-10T12:59:59", False),  # 08:59
        ("2025-03-10T21:59:30", True),  # 17:59
        ("2025-03-10T22:00", False),  # 18:00
        ("2025-03-08T15:00", False),  # Saturday 10:00 EST
        ("2025-03-07T14:00", True),  # Friday 09:00 EST
    ],
)
def test_business_hours_open_and_closed(at: str, is_open: bool) -> None:
    assert is_minute_open(parse_cron(BUSINESS), NY, utc(at)) is is_open


@pytest.mark.parametrize(
    ("tz", "expr", "at", "expected"),
    [
        (NY, BUSINESS, "2025-03-07T23:00", "2025-03-10T13:00"),  # Friday 18:00 EST → Monday 09:00 EDT
        (NY, BUSINESS, "2025-10-31T22:00", "2025-11-03T14:00"),  # Friday 18:00 EDT → Monday 09:00 EST
        (NY, BUSINESS, "2025-03-10T12:59:30", "2025-03-10T13:00"),
        (NY, BUSINESS, "2025-03-10T13:00", "2025-03-10T13:01"),  # next boundary, even if `at` is open
        (BERLIN, BUSINESS, "2025-03-28T17:00:01", "2025-03-31T07:00"),  # Friday 18:00 CET → Monday CEST
        (NY, "* 2 * * *", "2025-03-09T06:30", "2025-03-10T06:00"),  # 02:xx does not exist on the 9th
        (NY, "0-10 1 * * *", "2025-11-02T05:30", "2025-11-02T06:00"),  # the repeated 01:00 (EST) is open
        (NY, "* 1 * * *", "2025-11-02T05:59:30", "2025-11-02T06:00"),
        (NY, "* 1 * * *", "2025-11-02T06:59", "2025-11-03T06:00"),
        (BERLIN, "0-5 2 * * *", "2025-10-26T00:30", "2025-10-26T01:00"),
    ],
)
def test_next_open_minute(tz: str, expr: str, at: str, expected: str) -> None:
    spec = parse_cron(expr)
    opened = next_open_minute(spec, tz, utc(at))
    assert opened == utc(expected) and opened.tzinfo is UTC
    assert is_minute_open(spec, tz, opened)


def test_repeated_minutes_are_open_in_both_passes() -> None:
    spec = parse_cron("* 1 * * *")
    assert is_minute_open(spec, NY, utc("2025-11-02T05:05"))  # 01:05 EDT
    assert is_minute_open(spec, NY, utc("2025-11-02T06:05"))  # 01:05 EST
    assert not is_minute_open(spec, NY, utc("2025-11-02T07:05"))


# --- time zones and tick keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "valid"),
    [("UTC", True), ("Europe/Paris", True), ("America/New_York", True), ("Etc/GMT+5", True),
     ("Europe/Pariss", False), ("utc", False), ("europe/paris", False), ("", False), ("localtime", False),
     ("/etc/localtime", False), ("../zoneinfo/UTC", False), ("Europe/Paris ", False)],
)
def test_is_valid_timezone(name: str, valid: bool) -> None:
    assert is_valid_timezone(name) is valid


def test_tick_key() -> None:
    job_id = "0190f3a2-7b1c-7def-8abc-0123456789ab"
    assert tick_key(job_id, utc("2025-03-09T07:00:00.123456")) == f"cron:{job_id}:2025-03-09T07:00:00Z"
    eastern = datetime(2025, 3, 9, 3, 0, tzinfo=ZoneInfo(NY))
    assert tick_key(job_id, eastern) == f"cron:{job_id}:2025-03-09T07:00:00Z"
    with pytest.raises(ValueError):
        tick_key(job_id, datetime(2025, 3, 9, 7))


def test_next_fire_time_is_fast() -> None:
    # A loose bound only: the real target is tens of microseconds per call.
    specs = [parse_cron(e) for e in ("*/5 * * * *", "0 9 * * 1-5", "0 0 29 2 *", "30 2 * * *", "0 0 13 * 5")]
    start = utc("2025-03-08T12:00")
    began = time.perf_counter()
    for i in range(1000):
        next_fire_time(specs[i % len(specs)], NY, start + timedelta(minutes=37 * i))
    assert time.perf_counter() - began < 2.0


# --- properties --------------------------------------------------------------------------------------

ZONES = ["UTC", NY, BERLIN, "Australia/Lord_Howe", "Australia/Sydney", "Asia/Kolkata", "America/Santiago"]


def _item(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    bounds = st.tuples(value, value).map(sorted)
    return st.one_of(
        st.just("*"),
        value.map(str),
        bounds.map(lambda b: f"{b[0]}-{b[1]}"),
        st.tuples(bounds, st.integers(1, 12)).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
        st.integers(1, 20).map(lambda n: f"*/{n}"),
    )


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    return st.lists(_item(low, high), min_size=1, max_size=3).map(",".join)


EXPRESSIONS = st.tuples(_field(0, 59), _field(0, 23), _field(1, 31), _field(1, 12), _field(0, 7)).map(" ".join)
# Frequent expressions (every day) for brute-force comparisons over a few days around transitions.
DAILY = st.tuples(_field(0, 59), _field(0, 23)).map(lambda f: f"{f[0]} {f[1]} * * *")
INSTANTS = st.datetimes(datetime(1990, 1, 1), datetime(2060, 1, 1), timezones=st.just(UTC))
# Instants within a day of a transition in each zone (found by scanning, below).
TRANSITION_DAYS = ["2025-03-09", "2025-11-02", "2025-03-30", "2025-10-26", "2025-04-06", "2025-10-05",
                   "2025-09-07"]


def _spec(expr: str) -> CronSpec:
    try:
        return parse_cron(expr)
    except CronError:
        assume(False)
        raise


def _reference_ticks(spec: CronSpec, zone: ZoneInfo, start: datetime, minutes: int) -> list[datetime]:
    """§6.2 stated directly over physical minutes: first passes of matching walls, plus each gap's end
    when a skipped wall minute or the gap's end itself matches."""
    out = []
    for i in range(minutes):
        u = start + i * MINUTE
        local, before = u.astimezone(zone), (u - MINUTE).astimezone(zone)
        wall = local.replace(tzinfo=None, fold=0)
        if local.utcoffset() > before.utcoffset():  # type: ignore[operator]
            skipped = before.replace(tzinfo=None, fold=0) + MINUTE
            walls = [skipped + k * MINUTE for k in range(int((wall - skipped) / MINUTE) + 1)]
            if any(spec.matches(w) for w in walls):
                out.append(u)
        elif local.fold == 0 and spec.matches(wall):
            out.append(u)
    return out


@settings(max_examples=150, deadline=None)
@given(EXPRESSIONS, st.sampled_from(ZONES), INSTANTS)
def test_property_next_and_previous_agree(expr: str, tz: str, at: datetime) -> None:
    spec, zone = _spec(expr), ZoneInfo(tz)
    tick = next_fire_time(spec, tz, at)
    assert tick > at and tick.second == 0 and tick.microsecond == 0
    local = tick.astimezone(zone)
    just_before = (tick - timedelta(seconds=1)).astimezone(zone)
    is_gap_end = local.utcoffset() > just_before.utcoffset()  # type: ignore[operator]
    assert is_gap_end or (spec.matches(local.replace(tzinfo=None)) and local.fold == 0)
    assert previous_fire_time(spec, tz, tick) == tick
    earlier = previous_fire_time(spec, tz, at, horizon_years=10)
    assert earlier is not None and earlier <= at
    assert next_fire_time(spec, tz, earlier) == tick  # no tick in (earlier, at]


@settings(max_examples=60, deadline=None)
@given(DAILY, st.sampled_from(ZONES), st.sampled_from(TRANSITION_DAYS), st.integers(-36 * 60, 36 * 60))
def test_property_matches_brute_force_around_transitions(expr: str, tz: str, day: str, shift: int) -> None:
    spec, zone = _spec(expr), ZoneInfo(tz)
    start = utc(day + "T06:00") + shift * MINUTE
    reference = _reference_ticks(spec, zone, start + MINUTE, 2 * 24 * 60)
    assume(reference)
    assert next_fire_time(spec, tz, start) == reference[0]
    assert previous_fire_time(spec, tz, reference[-1] + timedelta(seconds=30)) == reference[-1]
    # Windows walk physical minutes: every wall minute that exists, both passes of repeated ones.
    opened = [start + i * MINUTE for i in range(1, 2 * 24 * 60)
              if spec.matches((start + i * MINUTE).astimezone(zone).replace(tzinfo=None))]
    assume(opened)
    assert next_open_minute(spec, tz, start) == opened[0]
