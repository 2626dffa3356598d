"""Missed-tick selection (§6.4) and the pure parts of sync and firing, with an explicit `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scheduler.fire import TickRequest, group_by_tick, is_tick_wanted
from scheduler.missed import count_ticks_between, find_missed_tick, floor_of, is_within_grace, tick_of_key
from scheduler.sync import ScheduleRow, plan_sync
from shared.db.models import Job
from shared.schedules.cron import parse_cron, tick_key

EVERY_MINUTE = parse_cron("* * * * *")
HOURLY = parse_cron("0 * * * *")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_tick_key_round_trips() -> None:
    tick = utc(2025, 3, 1, 9, 30)
    assert tick_of_key(tick_key("0190a0b0-0000-7000-8000-000000000001", tick)) == tick
    assert tick_of_key(None) is None
    assert tick_of_key("manual-key") is None
    assert tick_of_key("cron:abc:not-a-time") is None


def test_floor_is_the_latest_of_creation_change_and_last_run() -> None:
    created, changed, last = utc(2025, 1, 1), utc(2025, 2, 1), utc(2025, 3, 1)
    assert floor_of(created, changed, last) == last
    assert floor_of(created, changed, None) == changed
    assert floor_of(created, None, None) == created


def test_latest_missed_tick_within_grace_fires() -> None:
    now = utc(2025, 3, 1, 9, 0, 30)
    missed = find_missed_tick(EVERY_MINUTE, "UTC", now=now, floor=utc(2025, 3, 1, 8, 58), grace_secs=60)
    assert missed is not None
    assert (missed.tick, missed.fire, missed.older) == (utc(2025, 3, 1, 9, 0), True, 1)  # 08:59 superseded


def test_latest_missed_tick_beyond_grace_is_skipped() -> None:
    now = utc(2025, 3, 1, 9, 0, 5)
    missed = find_missed_tick(EVERY_MINUTE, "UTC", now=now, floor=utc(2025, 3, 1, 8, 0), grace_secs=5)
    assert missed is not None
    assert (missed.tick, missed.fire, missed.older) == (utc(2025, 3, 1, 9, 0), False, 59)


def test_grace_is_strict() -> None:
    tick = utc(2025, 3, 1, 9)
    assert is_within_grace(tick, tick + timedelta(seconds=59.999), 60)
    assert not is_within_grace(tick, tick + timedelta(seconds=60), 60)


@pytest.mark.parametrize("floor", [utc(2025, 3, 1, 9, 0), utc(2025, 3, 1, 9, 0, 10)])
def test_nothing_missed_when_the_latest_tick_is_at_or_before_the_floor(floor: datetime) -> None:
    # The floor is the job's creation, last schedule change (re-enable included) or newest cron run.
    assert find_missed_tick(EVERY_MINUTE, "UTC", now=utc(2025, 3, 1, 9, 0, 30), floor=floor, grace_secs=60) is None


def test_ticks_while_disabled_never_count() -> None:
    # Disabled at 08:00, re-enabled at 09:10:30 (schedule_changed_at): the 09:00 hourly tick is not missed.
    floor = floor_of(utc(2025, 1, 1), utc(2025, 3, 1, 9, 10, 30), utc(2025, 3, 1, 8, 0))
    assert find_missed_tick(HOURLY, "UTC", now=utc(2025, 3, 1, 9, 10, 40), floor=floor, grace_secs=3600) is None


def test_missed_tick_across_spring_forward_uses_the_dst_rules() -> None:
    spec = parse_cron("30 2 * * *")
    now = utc(2025, 3, 9, 7, 0, 20)  # 03:00:20 EDT, just after the tick that replaces 02:30
    missed = find_missed_tick(spec, "America/New_York", now=now, floor=utc(2025, 3, 9, 6, 0), grace_secs=60)
    assert missed is not None and missed.tick == utc(2025, 3, 9, 7, 0) and missed.fire


def test_counting_older_ticks_is_capped() -> None:
    assert count_ticks_between(EVERY_MINUTE, "UTC", utc(2025, 3, 1), utc(2025, 3, 1, 0, 10)) == 9
    assert count_ticks_between(EVERY_MINUTE, "UTC", utc(2025, 3, 1), utc(2025, 4, 1), cap=100) == 100


def _row(job_id: str, cron: str = "* * * * *", tz: str = "UTC", changed: datetime | None = None) -> ScheduleRow:
    return ScheduleRow(job_id, cron, tz, changed or utc(2025, 1, 1), utc(2025, 1, 1))


def test_plan_sync_adds_replaces_and_removes() -> None:
    current = {"a": _row("a"), "b": _row("b"), "c": _row("c"), "d": _row("d")}
    desired = {"a": _row("a"), "b": _row("b", "*/5 * * * *"), "c": _row("c", tz="Europe/Paris"),
               "d": _row("d", changed=utc(2025, 2, 1)), "e": _row("e")}
    plan = plan_sync({k: v for k, v in current.items() if k != "d"} | {"x": _row("x")}, desired)
    assert [r.job_id for r in plan.add] == ["d", "e"]
    assert sorted(r.job_id for r in plan.replace) == ["b", "c"]
    assert plan.remove == ["x"]
    assert not plan_sync(desired, desired)


def test_group_by_tick_orders_instants_and_drops_duplicates() -> None:
    t1, t2 = utc(2025, 3, 1, 9, 1), utc(2025, 3, 1, 9, 0)
    groups = group_by_tick([TickRequest("a", t1, "*", "UTC"), TickRequest("b", t2, "*", "UTC"),
                            TickRequest("a", t1, "*", "UTC", catch_up=True)])
    assert [(tick, [r.job_id for r in requests]) for tick, requests in groups] == [(t2, ["b"]), (t1, ["a"])]


def _job(**fields: object) -> Job:
    values: dict[str, object] = {"id": "j", "enabled": True, "cron": "* * * * *", "timezone": "UTC",
                                 "created_at": utc(2025, 3, 1), "schedule_changed_at": utc(2025, 3, 1, 9, 0, 30)}
    values.update(fields)
    return Job(**values)


@pytest.mark.parametrize(("fields", "wanted"), [
    ({}, True),
    ({"enabled": False}, False),
    ({"cron": None}, False),
    ({"cron": "*/5 * * * *"}, False),
    ({"timezone": "Europe/Paris"}, False),
    ({"schedule_changed_at": utc(2025, 3, 1, 9, 1, 0, 5)}, False),  # changed after the tick
    ({"created_at": utc(2025, 3, 1, 9, 1, 1), "schedule_changed_at": utc(2025, 3, 1, 9, 1, 1)}, False),
])
def test_a_tick_fires_only_for_the_schedule_it_came_from(fields: dict[str, object], wanted: bool) -> None:
    request = TickRequest("j", utc(2025, 3, 1, 9, 1), "* * * * *", "UTC")
    assert is_tick_wanted(_job(**fields), request) is wanted
    assert is_tick_wanted(None, request) is False
