"""Missed ticks (CONTRACT §6.4), decided without I/O: every instant, ``now`` included, is an argument.

A tick that was not processed on time (scheduler down, late, or a failed firing) is *missed*. For each
job only the **latest** tick at or before ``now`` is considered, and only if it comes after the job's
*floor*: the latest of its creation, its last ``cron``/``timezone``/``enabled`` change
(``schedule_changed_at``; disabling and re-enabling moves it, so ticks while disabled never count) and
the tick of its newest existing cron run. That tick fires once if it is less than the grace old; every
other missed tick is skipped (the caller logs and counts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.schedules.cron import CronError, CronSpec, next_fire_time, previous_fire_time

# Counting the older skipped ticks of a job stops here (a job down for a year on `* * * * *`).
MAX_COUNTED_SKIPS = 10_000
_KEY_TICK_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class MissedTick:
    """The latest missed tick of one job: ``fire`` it, or skip it; ``older`` earlier ticks were skipped."""

    tick: datetime
    fire: bool
    older: int


def tick_of_key(idempotency_key: str | None) -> datetime | None:
    """The tick encoded in a cron run's ``cron:<job id>:<YYYY-MM-DDTHH:MM:SSZ>`` key (§6.3), else ``None``."""
    if not idempotency_key or not idempotency_key.startswith("cron:"):
        return None
    parts = idempotency_key.split(":", 2)  # job ids contain no colon; the timestamp does
    if len(parts) != 3:
        return None
    try:
        return datetime.strptime(parts[2], _KEY_TICK_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def floor_of(created_at: datetime, schedule_changed_at: datetime | None, last_run_tick: datetime | None) -> datetime:
    """The instant at or before which no tick of the job can be missed."""
    return max(t for t in (created_at, schedule_changed_at, last_run_tick) if t is not None)


def is_within_grace(tick: datetime, now: datetime, grace_secs: float) -> bool:
    """Whether a tick is still young enough to fire: ``now - tick`` strictly below the grace."""
    return now - tick < timedelta(seconds=grace_secs)


def count_ticks_between(spec: CronSpec, tz: str, after: datetime, before: datetime,
                        cap: int = MAX_COUNTED_SKIPS) -> int:
    """How many ticks lie strictly between ``after`` and ``before`` (at most ``cap``)."""
    count = 0
    current = after
    while count < cap:
        try:
            current = next_fire_time(spec, tz, current)
        except CronError:
            break
        if current >= before:
            break
        count += 1
    return count


def find_missed_tick(spec: CronSpec, tz: str, *, now: datetime, floor: datetime,
                     grace_secs: float) -> MissedTick | None:
    """The job's latest tick in (``floor``, ``now``] and what to do with it, or ``None`` if there is none."""
    tick = previous_fire_time(spec, tz, now)
    if tick is None or tick <= floor:
        return None
    return MissedTick(tick=tick, fire=is_within_grace(tick, now, grace_secs),
                      older=count_ticks_between(spec, tz, floor, tick))
