"""The APScheduler adapter: CronTickTrigger delegates to shared.schedules.cron; TickExecutor hands over ticks."""

from __future__ import annotations

import pickle
import threading
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.cron import TickExecutor, TimerScheduler
from scheduler.fire import TickRequest
from scheduler.trigger import CronTickTrigger


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_every_minute_fires_strictly_after_the_previous_tick() -> None:
    trigger = CronTickTrigger("* * * * *", "UTC")
    assert trigger.get_next_fire_time(utc(2025, 3, 1, 9, 0), utc(2025, 3, 1, 9, 0, 0)) == utc(2025, 3, 1, 9, 1)
    assert trigger.get_next_fire_time(None, utc(2025, 3, 1, 9, 0, 30)) == utc(2025, 3, 1, 9, 1)
    # A new entry whose `now` is exactly on a tick gets the next one (that tick belongs to catch-up).
    assert trigger.get_next_fire_time(None, utc(2025, 3, 1, 9, 0)) == utc(2025, 3, 1, 9, 1)


@pytest.mark.parametrize("expression", ["0 9 * * 0", "0 9 * * 7", "0 9 * * sun"])
def test_day_of_week_zero_and_seven_are_sunday(expression: str) -> None:
    trigger = CronTickTrigger(expression, "UTC")
    tick = trigger.get_next_fire_time(None, utc(2025, 3, 3, 0, 0))  # a Monday
    assert tick == utc(2025, 3, 9, 9, 0)
    assert tick.strftime("%A") == "Sunday"


def test_spring_forward_fires_once_at_the_end_of_the_gap() -> None:
    trigger = CronTickTrigger("30 2 * * *", "America/New_York")
    tick = trigger.get_next_fire_time(None, utc(2025, 3, 8, 12, 0))
    assert tick == utc(2025, 3, 9, 7, 0)  # 03:00 EDT, the first instant after the gap
    assert trigger.get_next_fire_time(tick, tick) == utc(2025, 3, 10, 6, 30)  # 02:30 EDT next day


def test_fall_back_fires_at_the_first_occurrence_only() -> None:
    trigger = CronTickTrigger("30 1 * * *", "America/New_York")
    first = trigger.get_next_fire_time(None, utc(2025, 11, 1, 12, 0))
    assert first == utc(2025, 11, 2, 5, 30)  # 01:30 EDT
    assert trigger.get_next_fire_time(first, first) == utc(2025, 11, 3, 6, 30)  # not 01:30 EST (06:30Z on the 2nd)


def test_hourly_skips_the_repeated_hour() -> None:
    trigger = CronTickTrigger("0 * * * *", "America/New_York")
    ticks = [trigger.get_next_fire_time(None, utc(2025, 11, 2, 4, 30))]
    for _ in range(3):
        ticks.append(trigger.get_next_fire_time(ticks[-1], ticks[-1]))
    # 01:00 EDT (05:00Z), then 02:00 EST (07:00Z): the second 01:00 (06:00Z) gives no tick.
    assert ticks == [utc(2025, 11, 2, 5), utc(2025, 11, 2, 7), utc(2025, 11, 2, 8), utc(2025, 11, 2, 9)]


@pytest.mark.parametrize(("cron", "tz"), [("61 * * * *", "UTC"), ("* * * * *", "Europe/Pariss"), ("* * * * *", "utc")])
def test_unusable_schedules_are_refused_when_built(cron: str, tz: str) -> None:
    with pytest.raises(ValueError):
        CronTickTrigger(cron, tz)


def test_pickles_by_expression_and_zone() -> None:
    trigger = pickle.loads(pickle.dumps(CronTickTrigger("*/5 * * * *", "Europe/Paris")))
    assert (trigger.cron, trigger.timezone) == ("*/5 * * * *", "Europe/Paris")
    assert trigger.get_next_fire_time(None, utc(2025, 6, 1, 0, 1)) == utc(2025, 6, 1, 0, 5)


def test_entries_due_on_one_instant_reach_the_firing_queue_as_one_batch() -> None:
    received: list[list[TickRequest]] = []
    got = threading.Event()

    def on_ticks(requests: list[TickRequest]) -> None:
        received.append(requests)
        got.set()

    entries = TimerScheduler(timezone=UTC, executors={"ticks": TickExecutor(on_ticks)})
    due = datetime.now(UTC) + timedelta(milliseconds=300)
    for i in range(200):
        entries.add_job(print, trigger=CronTickTrigger("0 0 1 1 *", "UTC"), id=f"job-{i}", executor="ticks",
                        next_run_time=due, coalesce=True)
    entries.start()
    try:
        assert got.wait(5)
        # The entries moved on to their trigger's next tick instead of running anything.
        assert entries.get_job("job-0").next_run_time.year > due.year
    finally:
        entries.shutdown(wait=False)
    assert len(received) == 1
    assert sorted(r.job_id for r in received[0]) == sorted(f"job-{i}" for i in range(200))
    assert received[0][0] == TickRequest(received[0][0].job_id, due, "0 0 1 1 *", "UTC")
