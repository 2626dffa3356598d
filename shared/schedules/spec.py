"""The cron dialect of CONTRACT §6.1: parsing, matching, and field-wise search in local wall time.

Pure: no clock, no time zones. Everything here works on *naive local* datetimes at minute precision;
``shared/schedules/cron.py`` maps those wall times to UTC instants with the §6.2 DST rules and is the module
the rest of Sluice imports.

Day fields (standard Vixie cron, ``entry.c`` + ``cron.c``): a day field counts as a wildcard when its text
starts with ``*`` (so ``*`` and ``*/2``); we extend that to *any* list item starting with ``*`` so that
``*,10`` and ``10,*`` mean the same thing (Vixie treats the two spellings differently). Then:

* neither day field is a wildcard → a day matches if day-of-month **or** day-of-week matches;
* otherwise → it must match **both** (a plain ``*`` allows every day, so "only the other counts";
  ``*/2`` still filters: ``0 0 */2 * 1`` is odd-numbered days that are Mondays, as in Vixie cron).

``a/n`` means ``a-<max>/n`` in every field (§6.1, as cronie reads it).
Descriptors are the five of §6.1, case-insensitive like names; any other ``@…`` is refused. Surrounding
whitespace is ignored and fields may be separated by any run of blanks.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

DESCRIPTORS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}
_MONTH_NAMES = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_DOW_NAMES = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (low, high, names) per field, in expression order.
_FIELDS: tuple[tuple[int, int, dict[str, int] | None], ...] = (
    (0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTH_NAMES), (0, 7, _DOW_NAMES),
)
# One list item: `*`, `*/n`, `a`, `a-b`, `a/n`, `a-b/n`; ASCII only (str.isdigit accepts '²' and friends).
_ITEM_RE = re.compile(r"(?:(\*)|([0-9]+|[a-z]{3})(?:-([0-9]+|[a-z]{3}))?)(?:/([0-9]+))?", re.ASCII)
# Longest month, February counted as 29: a date that fits nowhere here never exists.
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class CronError(ValueError):
    """The expression is not in the §6.1 dialect. ``str(err)`` is the human reason for a 400 message."""


def _mask(values: tuple[int, ...]) -> int:
    bits = 0
    for value in values:
        bits |= 1 << value
    return bits


@dataclass(frozen=True)
class CronSpec:
    """A parsed expression. Value sets are sorted tuples; weekdays use 0 = Sunday … 6 = Saturday."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    dom_wildcard: bool
    dow_wildcard: bool
    # Bit masks for O(1) membership; derived, so excluded from equality and repr.
    _masks: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        masks = tuple(_mask(v) for v in (self.minutes, self.hours, self.days, self.months, self.weekdays))
        object.__setattr__(self, "_masks", masks)

    def matches(self, wall: datetime) -> bool:
        """Whether the local wall-clock minute ``wall`` (naive; seconds ignored) matches."""
        m_min, m_hour, _, m_month, _ = self._masks
        return bool(m_min >> wall.minute & 1 and m_hour >> wall.hour & 1 and m_month >> wall.month & 1
                    and self.day_matches(wall.day, (wall.weekday() + 1) % 7))

    def day_matches(self, day: int, weekday: int) -> bool:
        """The day rule alone; ``weekday`` is 0 = Sunday. See the module docstring for OR vs AND."""
        dom_ok = bool(self._masks[2] >> day & 1)
        dow_ok = bool(self._masks[4] >> weekday & 1)
        if self.dom_wildcard or self.dow_wildcard:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def _first_day(self, year: int, month: int, day: int) -> int | None:
        first_weekday, n_days = calendar.monthrange(year, month)
        for d in range(day, n_days + 1):
            if self.day_matches(d, (first_weekday + d) % 7):  # monthrange: Monday = 0, so +1 -1 cancel
                return d
        return None

    def _last_day(self, year: int, month: int, day: int) -> int | None:
        first_weekday, n_days = calendar.monthrange(year, month)
        for d in range(min(day, n_days), 0, -1):
            if self.day_matches(d, (first_weekday + d) % 7):
                return d
        return None

    def first_match(self, start: datetime, last_year: int) -> datetime | None:
        """Earliest matching wall minute >= ``start`` (naive), searching field-wise up to ``last_year``.

        Cost is a handful of steps per month/day/hour visited, never a minute-by-minute scan.
        """
        year, month, day, hour, minute = start.year, start.month, start.day, start.hour, start.minute
        months, hours, minutes = self.months, self.hours, self.minutes
        while year <= last_year:
            i = bisect_left(months, month)
            if i == len(months):
                year, month, day, hour, minute = year + 1, 1, 1, 0, 0
                continue
            if months[i] != month:
                month, day, hour, minute = months[i], 1, 0, 0
            d = self._first_day(year, month, day)
            if d is None:
                month, day, hour, minute = month + 1, 1, 0, 0
                if month > 12:
                    year, month = year + 1, 1
                continue
            if d != day:
                day, hour, minute = d, 0, 0
            i = bisect_left(hours, hour)
            if i == len(hours):
                day, hour, minute = day + 1, 0, 0  # _first_day copes with day past the month's end
                continue
            if hours[i] != hour:
                hour, minute = hours[i], 0
            i = bisect_left(minutes, minute)
            if i == len(minutes):
                hour, minute = hour + 1, 0  # hour 24 falls through to the next day above
                continue
            return datetime(year, month, day, hour, minutes[i])
        return None

    def last_match(self, end: datetime, first_year: int) -> datetime | None:
        """Latest matching wall minute <= ``end`` (naive), searching field-wise back to ``first_year``."""
        year, month, day, hour, minute = end.year, end.month, end.day, end.hour, end.minute
        months, hours, minutes = self.months, self.hours, self.minutes
        while year >= first_year:
            i = bisect_right(months, month) - 1
            if i < 0:
                year, month, day, hour, minute = year - 1, 12, 31, 23, 59
                continue
            if months[i] != month:
                month, day, hour, minute = months[i], 31, 23, 59
            d = self._last_day(year, month, day)
            if d is None:
                month, day, hour, minute = month - 1, 31, 23, 59
                if month < 1:
                    year, month = year - 1, 12
                continue
            if d != day:
                day, hour, minute = d, 23, 59
            i = bisect_right(hours, hour) - 1
            if i < 0:
                day, hour, minute = day - 1, 23, 59  # day 0 makes _last_day return None
                continue
            if hours[i] != hour:
                hour, minute = hours[i], 59
            i = bisect_right(minutes, minute) - 1
            if i < 0:
                hour, minute = hour - 1, 59  # hour -1 falls through to the previous day above
                continue
            return datetime(year, month, day, hour, minutes[i])
        return None


def _value(token: str, low: int, high: int, names: dict[str, int] | None) -> int:
    if token.isdigit():
        value = int(token)
    elif names is not None and token in names:
        value = names[token]
    else:
        raise ValueError(token)
    if not low <= value <= high:
        raise ValueError(token)
    return value


def _parse_field(text: str, low: int, high: int, names: dict[str, int] | None) -> tuple[set[int], bool]:
    """Values of one field and whether it counts as a wildcard; ``ValueError`` on anything else."""
    values: set[int] = set()
    wildcard = False
    for item in text.lower().split(","):
        match = _ITEM_RE.fullmatch(item)
        if match is None:
            raise ValueError(item)
        star, first, last, step_text = match.groups()
        step = int(step_text) if step_text is not None else 1
        if step == 0:
            raise ValueError(item)
        if star:
            wildcard = True
            start, stop = low, high
        else:
            start = _value(first, low, high, names)
            # `a/n` runs to the field's maximum; a bare `a` is the single value.
            stop = _value(last, low, high, names) if last else (high if step_text else start)
            if start > stop:
                raise ValueError(item)
        values.update(range(start, stop + 1, step))
    return values, wildcard


@lru_cache(maxsize=16384)
def parse_cron(expr: str) -> CronSpec:
    """Parse a §6.1 expression; raise ``CronError`` (``invalid expression "<expr>"`` or
    ``expression never matches``). Results are cached: the worker re-checks windows on every attempt.
    """
    if not isinstance(expr, str):
        raise CronError(f'invalid expression "{expr}"')
    text = expr.strip()
    fields = DESCRIPTORS.get(text.lower(), "") if text.startswith("@") else text
    parts = fields.split()
    if len(parts) != 5:
        raise CronError(f'invalid expression "{expr}"')
    parsed: list[tuple[set[int], bool]] = []
    try:
        for part, (low, high, names) in zip(parts, _FIELDS, strict=True):
            parsed.append(_parse_field(part, low, high, names))
    except ValueError:
        raise CronError(f'invalid expression "{expr}"') from None
    (minutes, _), (hours, _), (days, dom_wild), (months, _), (weekdays, dow_wild) = parsed
    if 7 in weekdays:  # 0 and 7 are both Sunday
        weekdays = (weekdays - {7}) | {0}
    spec = CronSpec(
        expression=text, minutes=tuple(sorted(minutes)), hours=tuple(sorted(hours)),
        days=tuple(sorted(days)), months=tuple(sorted(months)), weekdays=tuple(sorted(weekdays)),
        dom_wildcard=dom_wild, dow_wildcard=dow_wild,
    )
    # With OR every week has a matching day. With AND a wildcard day-of-month always holds day 1 and every
    # real date falls on every weekday over the years, so only month/day-of-month combinations can fail.
    if (dom_wild or dow_wild) and not any(d <= _MAX_DAYS[m] for m in months for d in days):
        raise CronError("expression never matches")
    return spec
