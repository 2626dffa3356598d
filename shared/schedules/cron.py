"""The one owner of Sluice's cron dialect (CONTRACT §6.1–§6.4, §5.7). Pure: every instant is an argument.

API validation calls ``parse_cron`` and ``is_valid_timezone``; the scheduler ``next_fire_time``,
``previous_fire_time`` and ``tick_key``; the worker ``is_minute_open`` and ``next_open_minute``.
Parsing and the local-time field search live in ``shared/schedules/spec.py`` (re-exported here).

Instants in and out are aware datetimes (any zone in, UTC out; naive → ``ValueError``). Expressions match
local wall-clock minutes in the IANA zone ``tz``. Mapping a matching wall minute to its tick (§6.2):

* it exists once → that instant;
* it occurs twice (fall back) → its first occurrence only;
* it does not exist (spring forward) → the first instant after the gap; every skipped minute maps to that
  same instant, as does the wall minute right after the gap, so they yield one tick.

This mapping never decreases as wall time increases, which is what lets ``next_fire_time`` and
``previous_fire_time`` search field-wise in wall time and convert only the candidate they find.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from shared.schedules.spec import DESCRIPTORS, CronError, CronSpec, parse_cron

__all__ = [
    "DESCRIPTORS", "TICK_KEY_PREFIX", "CronError", "CronSpec", "is_minute_open", "is_tick_key", "is_valid_timezone",
    "next_fire_time", "next_open_minute", "parse_cron", "previous_fire_time", "tick_key",
]

_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)
# Every valid expression matches within 8 years (29 February, 2096 → 2104); 30 leaves room to spare.
_NEXT_HORIZON_YEARS = 30
# Longer than any real DST shift (two hours, "double summer time"), so a fall-back is never missed.
_MAX_SHIFT = timedelta(hours=3)
# Files in the tz directory that are not IANA zone keys.
_NOT_KEYS = frozenset({"localtime", "posixrules", "posix", "right"})


@lru_cache(maxsize=1)
def _zone_keys() -> frozenset[str]:
    # Membership in the key set makes the check case-sensitive on case-insensitive file systems too.
    return frozenset(available_timezones()) - _NOT_KEYS


def is_valid_timezone(name: str) -> bool:
    """Whether ``name`` is an IANA tz database key, case-sensitive (``UTC`` yes, ``utc`` no)."""
    if not isinstance(name, str) or name not in _zone_keys():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)  # ZoneInfo caches instances per key
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'unknown time zone "{tz}"') from None


def _utc(instant: datetime, name: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return instant.astimezone(UTC)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """Naive local wall time of ``instant``, truncated to the minute (``fold`` cleared)."""
    return instant.astimezone(zone).replace(second=0, microsecond=0, tzinfo=None, fold=0)


def _offset_at(instant: datetime, zone: ZoneInfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # ZoneInfo always has one
    return offset


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] whose offset is ``after``'s (one transition assumed between).

    zoneinfo exposes no transition list, so bisect on whole seconds (offsets change on whole seconds).
    """
    target = _offset_at(after, zone)
    while after - before > _SECOND:
        middle = before + (after - before) // 2
        middle -= timedelta(microseconds=middle.microsecond)
        if middle <= before:
            middle = before + _SECOND
        if _offset_at(middle, zone) == target:
            after = middle
        else:
            before = middle
    return after


def _offsets(wall: datetime, zone: ZoneInfo) -> tuple[timedelta, timedelta]:
    """UTC offsets of ``wall`` read with fold=0 and fold=1 (PEP 495): equal unless it is in a gap or fold."""
    first = wall.replace(tzinfo=zone).utcoffset()
    second = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert first is not None and second is not None
    return first, second


def _tick_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The tick of a matching wall minute (§6.2, see the module docstring)."""
    off0, off1 = _offsets(wall, zone)
    if off0 >= off1:  # unique (equal), or repeated: fold=0 carries the earlier offset, the first occurrence
        return (wall - off0).replace(tzinfo=UTC)
    # In a gap fold=0 reads the offset before the transition and fold=1 the one after, so the transition
    # lies between the two readings.
    return _transition(zone, (wall - off1).replace(tzinfo=UTC), (wall - off0).replace(tzinfo=UTC))


def next_fire_time(spec: CronSpec, tz: str, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (aware UTC). ``ValueError`` for an unknown ``tz``.

    Field-wise search in wall time from the minute after ``after``'s wall minute; a candidate whose tick is
    not after ``after`` (only when ``after`` is in a repeated hour, or is a gap's end) is stepped past.
    """
    zone = _zone(tz)
    after = _utc(after, "after")
    start = _wall(after, zone) + _MINUTE
    last_year = min(start.year + _NEXT_HORIZON_YEARS, datetime.max.year)
    while True:
        wall = spec.first_match(start, last_year)
        if wall is None:
            raise CronError("expression never matches")
        tick = _tick_instant(wall, zone)
        if tick > after:
            return tick
        start = wall + _MINUTE


def previous_fire_time(
    spec: CronSpec, tz: str, at_or_before: datetime, *, horizon_years: int = 5
) -> datetime | None:
    """The latest tick <= ``at_or_before`` (aware UTC), or ``None`` if there is none since January 1 of
    the year ``horizon_years`` before. Used to find a job's latest missed tick (§6.4).
    """
    zone = _zone(tz)
    at = _utc(at_or_before, "at_or_before")
    end = _wall(at, zone)
    off0, off1 = _offsets(end, zone)
    if off0 > off1 and at.astimezone(zone).fold == 1:
        # In the second pass of a repeated hour every first pass is already past, later wall minutes of
        # the hour included; minutes beyond the repeat are stepped past below.
        end += off0 - off1
    first_year = max(end.year - horizon_years, datetime.min.year)
    while True:
        wall = spec.last_match(end, first_year)
        if wall is None:
            return None
        tick = _tick_instant(wall, zone)
        if tick <= at:
            return tick
        end = wall - _MINUTE


def is_minute_open(spec: CronSpec, tz: str, at: datetime) -> bool:
    """Whether the local minute containing ``at`` matches the window expression (§5.7).

    Both passes of a repeated (fall-back) minute are open if its wall time matches.
    """
    return spec.matches(_wall(_utc(at, "at"), _zone(tz)))


def _first_open(spec: CronSpec, zone: ZoneInfo, start: datetime, last_year: int) -> datetime | None:
    """First instant >= ``start`` whose wall minute (>= ``start``'s) matches; wall minutes walked forward."""
    wall = _wall(start, zone)
    while True:
        found = spec.first_match(wall, last_year)
        if found is None:
            return None
        off0, off1 = _offsets(found, zone)
        if off0 < off1:  # in a gap: those minutes do not exist, resume at the gap's end
            end = _transition(zone, (found - off1).replace(tzinfo=UTC), (found - off0).replace(tzinfo=UTC))
            wall = _wall(end, zone)
            continue
        for offset in (off0, off1):  # both passes of a repeated minute, earliest first
            instant = (found - offset).replace(tzinfo=UTC)
            if instant >= start:
                return instant
        wall = found + _MINUTE


def next_open_minute(spec: CronSpec, tz: str, at: datetime) -> datetime:
    """Start (aware UTC) of the first open minute at or after the minute boundary following ``at`` (§5.7).

    Walks physical minutes: wall minutes removed by spring-forward do not exist, and after a fall-back the
    repeated wall minutes count again, even if they come before ``at``'s wall time.
    """
    zone = _zone(tz)
    at = _utc(at, "at")
    start = at.replace(second=0, microsecond=0) + _MINUTE
    last_year = min(start.year + _NEXT_HORIZON_YEARS, datetime.max.year)
    found = _first_open(spec, zone, start, last_year)
    # Walking wall time forward misses one thing: a fall-back shortly after `start` repeats wall minutes
    # earlier than start's. That needs the clocks to go back within the next few hours.
    probe = start + _MAX_SHIFT
    if _offset_at(probe, zone) < _offset_at(start, zone):
        back = _transition(zone, start, probe)
        repeat = _first_open(spec, zone, back, last_year)
        if repeat is not None and (found is None or repeat < found):
            found = repeat
    if found is None:
        raise CronError("expression never matches")
    return found


TICK_KEY_PREFIX = "cron:"  # reserved: a trigger's idempotency key may not start with it


def tick_key(job_id: str, tick: datetime) -> str:
    """The idempotency key of a cron run (§6.3): ``cron:<job id>:<YYYY-MM-DDTHH:MM:SSZ>``."""
    return f"{TICK_KEY_PREFIX}{job_id}:{_utc(tick, 'tick').strftime('%Y-%m-%dT%H:%M:%SZ')}"


def is_tick_key(key: str | None) -> bool:
    """Whether ``key`` is a cron run's tick key (only cron runs can have one: the prefix is reserved)."""
    return key is not None and key.startswith(TICK_KEY_PREFIX)
