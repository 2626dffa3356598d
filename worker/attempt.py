"""A picked run as the start statement returns it, and the one attempt type the worker runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.runs.execution_settings import ExecutionSettings


@dataclass(frozen=True, slots=True)
class RunLimits:
    """For a picked run of a job with a limit that applies: what the limit check needs."""

    attempt: int  # the run's attempt count before this start
    priority: int
    metadata: dict[str, Any]
    tags: dict[str, Any]
    max_concurrency: int | None
    max_concurrency_per_key: int | None
    rate_limit_max: int | None
    rate_limit_window_secs: int | None
    rate_limit_keys: list[dict[str, Any]]

    @classmethod
    def of(cls, values: list[Any]) -> RunLimits:
        attempt, priority, metadata, tags, cap, key_cap, rate_max, rate_window, rate_keys = values
        return cls(attempt, priority, metadata or {}, tags or {}, cap, key_cap, rate_max, rate_window,
                   rate_keys or [])


@dataclass(frozen=True, slots=True)
class Picked:
    """One row of a start statement (``worker.start_statement``): the picked run, started (``attempt`` set) or not."""

    run_id: str
    status: str  # before the statement: queued, or delayed for a woken slot waiter
    job_id: str
    payload: str
    concurrency_key: str | None
    debug_mode: bool
    max_attempts_override: int | None
    timeout_secs_override: int | None
    live: dict[str, Any]  # the live job's six execution settings
    version: int
    version_id: str
    webhook_secrets: tuple[str, ...]  # the live job's, sealed, current first
    traceparent: str | None  # the run's (None for runs from before runs recorded one)
    project_id: str
    attempt: int | None  # the started attempt's number; None when the statement did not start it
    queued_at: datetime | None
    limited: bool
    limits: RunLimits | None
    candidate: dict[str, Any] | None  # the admission rules' fields, when a rule refused in SQL

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> Picked:
        (run_id, status, job_id, payload, key, debug, max_override, timeout_override, endpoint, fallback, timeout,
         max_attempts, strategy, delays, version, version_id, secret, previous, traceparent, project_id, attempt,
         queued_at, limited, limits, candidate) = row
        live = {"endpoint_url": endpoint, "fallback_endpoint_url": fallback, "timeout_secs": timeout,
                "max_attempts": max_attempts, "retry_strategy": strategy, "retry_delays_secs": delays}
        return cls(run_id, status, job_id, payload, key, bool(debug), max_override, timeout_override, live, version,
                   version_id, tuple(value for value in (secret, previous) if value), traceparent, project_id, attempt,
                   queued_at, bool(limited), None if limits is None else RunLimits.of(limits),
                   None if candidate is None else _candidate(candidate))


def _candidate(values: dict[str, Any]) -> dict[str, Any]:
    """The fields as the admission rules read them (JSON carries the timestamp as text)."""
    expires_at = values.get("expires_at")
    if isinstance(expires_at, str):
        values["expires_at"] = datetime.fromisoformat(expires_at)
    return values


@dataclass(frozen=True, slots=True)
class Attempt:
    """A started attempt: what the call, the record step and the release need."""

    run_id: str
    job_id: str
    attempt: int
    concurrency_key: str | None
    payload: str
    debug_mode: bool
    settings: ExecutionSettings
    max_attempts: int
    timeout_secs: int
    webhook_secrets: tuple[str, ...]  # always the live job's, sealed (opened only to sign)
    traceparent: str | None  # the run's
    queued_at: datetime | None
    # Started through the limit script with caps in use: its end may hand the slot to a waiting run
    # (worker.handoff). False for a run of a job without limits, or one started with room to spare
    # (``LimitDecision.roomy``): nobody is waiting for its slot.
    hands_off: bool
    # A run of a job without limits: no lease taken yet. The attempt monitor records it at its next poll
    # if the attempt is still running then (``worker.heartbeat.AttemptMonitor``).
    lease_pending: bool = False

    @classmethod
    def of(cls, picked: Picked, settings: ExecutionSettings, *, hands_off: bool,
           timeout_cap: int | None = None, lease_pending: bool = False) -> Attempt:
        """``timeout_cap``: the deployment's per-project cap on an attempt's timeout (``None``: none)."""
        assert picked.attempt is not None
        return cls(picked.run_id, picked.job_id, picked.attempt, picked.concurrency_key, picked.payload,
                   picked.debug_mode, settings, picked.max_attempts_override or settings.max_attempts,
                   attempt_timeout(picked, settings, timeout_cap), picked.webhook_secrets, picked.traceparent,
                   picked.queued_at, hands_off, lease_pending)


def attempt_timeout(picked: Picked, settings: ExecutionSettings, cap: int | None) -> int:
    """The attempt's timeout: the trigger's override, else the job's, cut to the per-project cap."""
    timeout = picked.timeout_secs_override or settings.timeout_secs
    return timeout if cap is None else min(timeout, cap)
