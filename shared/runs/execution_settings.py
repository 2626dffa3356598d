"""Execution settings of one attempt, resolved by the live job's version policy (CONTRACT §5.13).

Each attempt (and the reaper, which needs ``max_attempts`` and the retry strategy of a lost attempt)
resolves the six execution settings — ``endpoint_url``, ``fallback_endpoint_url``, ``timeout_secs``,
``max_attempts``, ``retry_strategy``, ``retry_delays_secs`` — from either the live job or the run's own
version snapshot:

* ``pin`` (default) → the snapshot named by the run's ``job_version_id``;
* ``latest`` → the live job;
* ``minor`` → the live job if its ``backwards_compatible`` is true, else the snapshot.

Everything else (enabled, window, time zone, limits, webhook URL and secret) is always read from the live
job by the caller. A snapshot that is missing or malformed makes the run unresolvable
(``SettingsUnresolvable``), which the worker records as ``system_failed``.

Shortcut: when the run was created at the job's current version (``run.job_version_id ==
job.version_id``) the live job *is* that snapshot for these fields (versions are immutable and every
changing PATCH writes one), so no snapshot row is read — the common case costs no query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from sqlalchemy.orm import Session

from shared.db.models import Job, Run
from shared.jobs.versions import find_version
from shared.runs.retries import STRATEGIES

POLICIES = ("pin", "latest", "minor")


class SettingsUnresolvable(Exception):
    """The run's execution settings cannot be determined; ``str()`` says why (no secrets, no payload)."""


@dataclass(frozen=True)
class ExecutionSettings:
    """What one attempt calls and how it retries. ``version``/``version_id`` name where they came from."""

    endpoint_url: str
    fallback_endpoint_url: str | None
    timeout_secs: int
    max_attempts: int
    retry_strategy: str
    retry_delays_secs: tuple[int, ...]
    version: int
    version_id: str


def resolve_execution_settings(session: Session, run: Run, job: Job) -> ExecutionSettings:
    """The settings this attempt of ``run`` uses, per ``job.version_policy`` (§5.13).

    ``job`` must be the live row of ``run.job_id``. Raises ``SettingsUnresolvable`` for an unknown policy
    or a missing/malformed snapshot.
    """
    policy = job.version_policy
    if policy not in POLICIES:
        raise SettingsUnresolvable(f"unknown version_policy {policy!r}")
    use_live = policy == "latest" or (policy == "minor" and bool(job.backwards_compatible))
    if use_live or run.job_version_id == job.version_id:
        return _from_config(_live_config(job), job.version, job.version_id)
    snapshot = find_version(session, job.id, run.job_version_id)
    if snapshot is None:
        raise SettingsUnresolvable(f"job version {run.job_version_id} not found")
    config = snapshot["config"]
    if not isinstance(config, Mapping):
        raise SettingsUnresolvable(f"job version {run.job_version_id} has no configuration")
    return _from_config(config, int(snapshot["version"]), str(snapshot["id"]))


def effective_max_attempts(run: Run, settings: ExecutionSettings) -> int:
    """``max_attempts_override`` or the resolved ``max_attempts`` (§5.4)."""
    return run.max_attempts_override or settings.max_attempts


def effective_timeout_secs(run: Run, settings: ExecutionSettings) -> int:
    """``timeout_secs_override`` or the resolved ``timeout_secs`` (§5.5)."""
    return run.timeout_secs_override or settings.timeout_secs


def live_settings(config: Mapping[str, Any], version: int, version_id: str) -> ExecutionSettings:
    """The settings from the live job's six fields (``config``), validated like any snapshot: for callers
    that read those fields themselves (the worker's one-statement start, ``worker.fast_start``)."""
    return _from_config(config, version, version_id)


def _live_config(job: Job) -> dict[str, Any]:
    return {
        "endpoint_url": job.endpoint_url, "fallback_endpoint_url": job.fallback_endpoint_url,
        "timeout_secs": job.timeout_secs, "max_attempts": job.max_attempts,
        "retry_strategy": job.retry_strategy, "retry_delays_secs": job.retry_delays_secs,
    }


def _from_config(config: Mapping[str, Any], version: int, version_id: str) -> ExecutionSettings:
    """Validate the six fields strictly: a stored value of the wrong shape is a Sluice-side fault."""
    endpoint = config.get("endpoint_url")
    fallback = config.get("fallback_endpoint_url")
    timeout = config.get("timeout_secs")
    attempts = config.get("max_attempts")
    strategy = config.get("retry_strategy") or "exponential"
    delays = config.get("retry_delays_secs") or []
    if not isinstance(endpoint, str) or not endpoint:
        raise SettingsUnresolvable(f"version {version_id}: endpoint_url missing")
    if fallback is not None and not isinstance(fallback, str):
        raise SettingsUnresolvable(f"version {version_id}: fallback_endpoint_url malformed")
    if not _is_int(timeout) or not 1 <= timeout <= 86_400:
        raise SettingsUnresolvable(f"version {version_id}: timeout_secs malformed")
    if not _is_int(attempts) or not 1 <= attempts <= 100:
        raise SettingsUnresolvable(f"version {version_id}: max_attempts malformed")
    if strategy not in STRATEGIES:
        raise SettingsUnresolvable(f"version {version_id}: unknown retry_strategy {strategy!r}")
    if not isinstance(delays, list) or not all(_is_int(d) and d >= 0 for d in delays):
        raise SettingsUnresolvable(f"version {version_id}: retry_delays_secs malformed")
    if strategy == "custom" and not delays:
        raise SettingsUnresolvable(f"version {version_id}: custom retry_strategy without retry_delays_secs")
    return ExecutionSettings(endpoint_url=endpoint, fallback_endpoint_url=fallback or None,
                             timeout_secs=int(timeout), max_attempts=int(attempts), retry_strategy=strategy,
                             retry_delays_secs=tuple(int(d) for d in delays), version=version,
                             version_id=version_id)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
