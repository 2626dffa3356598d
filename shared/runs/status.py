"""Run statuses: the eleven values, which are terminal, and which a run may be created in."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    DELAYED = "delayed"
    QUEUED = "queued"
    WAITING = "waiting"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    SYSTEM_FAILED = "system_failed"


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CRASHED,
                      RunStatus.CANCELED, RunStatus.EXPIRED, RunStatus.SYSTEM_FAILED})
ACTIVE = frozenset(set(RunStatus) - TERMINAL)
FAILURE_STATUSES = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CRASHED,
                              RunStatus.SYSTEM_FAILED})
# A new run is waiting (dependencies unmet), delayed (start ahead) or queued.
CREATED = frozenset({RunStatus.WAITING, RunStatus.DELAYED, RunStatus.QUEUED})


def is_terminal(status: str) -> bool:
    return status in TERMINAL
