"""An APScheduler 3 trigger that delegates every instant to ``shared.schedules.cron`` (CONTRACT §6.1–§6.2).

APScheduler only does the timing: when to wake up and which entries are due. The cron dialect, Sunday
as 0 and 7, and the DST rules all come from ``shared.schedules.cron`` (APScheduler's own ``CronTrigger``
reads day-of-week 0 as Monday and has its own DST behaviour, so it is never used).
"""

from __future__ import annotations

from datetime import datetime

from apscheduler.triggers.base import BaseTrigger

from shared.schedules.cron import CronError, CronSpec, is_valid_timezone, next_fire_time, parse_cron


class CronTickTrigger(BaseTrigger):
    """The ticks of one job's ``cron`` in its ``timezone``; the job's identity lives in the entry id.

    ``cron`` and ``timezone`` are kept verbatim so the firing side can check that a tick still belongs
    to the job's current schedule.
    """

    __slots__ = ("cron", "spec", "timezone")

    def __init__(self, cron: str, timezone: str) -> None:
        if not is_valid_timezone(timezone):
            raise ValueError(f'unknown time zone "{timezone}"')
        self.cron = cron
        self.timezone = timezone
        self.spec: CronSpec = parse_cron(cron)  # CronError is a ValueError too: the caller skips the job

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first tick strictly after the previous one (or after ``now`` for a new entry).

        ``None`` (APScheduler then drops the entry) only if the expression never matches again, which
        validated expressions never do (an unknown zone is refused when the trigger is built).
        """
        after = previous_fire_time if previous_fire_time is not None else now
        try:
            return next_fire_time(self.spec, self.timezone, after)
        except CronError:
            return None

    def __getstate__(self) -> dict[str, str]:
        return {"cron": self.cron, "timezone": self.timezone}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["cron"], state["timezone"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<CronTickTrigger {self.cron!r} tz={self.timezone!r}>"
