"""Execution settings of one attempt, resolved by the live job's version policy (CONTRACT §5.13).

Each attempt (and the reaper, which needs ``max_attempts`` and the retry strategy of a lost attempt)
resolves the six execution settings — ``endpoint_url``, ``fallback_endpoint_url``, ``timeout_secs``,
``max_attempts``, ``retry_strategy``, ``retry_delays_secs`` — from either the live job or the run's own
version snapshot:

* ``pin`` (default) → the snapshot named by the run's ``job_version_id``;
* ``latest`` → the live job;
* ``minor`` → the live job if its ``backwards_compatible`` is true, else the snapshot.

When the run was created at the job's current version the live job *is* that snapshot for these fields
(versions are immutable and every changing PATCH writes one), so no snapshot is read. Which case applies,
and whether the settings are usable, are rules of ``shared.runs.admission`` (the worker's start statement
applies the same rules in SQL). Everything else (enabled, window, time zone, limits, webhook URL and
secret) is always the live job's. A snapshot that is missing or malformed makes the run unresolvable
(``SettingsUnresolvable``), which the worker records as ``system_failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from shared.db.models import Job, Run
from shared.jobs.versions import find_version
from shared.runs.admission import RULES, settings_problem

SETTING_FIELDS = ("endpoint_url", "fallback_endpoint_url", "timeout_secs", "max_attempts", "retry_strategy",
                  "retry_delays_secs")
_KNOWN_POLICY, _LIVE_SETTINGS = (next(rule for rule in RULES if rule.name == name)
                                 for name in ("known_policy", "live_settings"))


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


def settings_of(config: Mapping[str, Any], version: int, version_id: str) -> ExecutionSettings:
    """The settings in ``config`` (a live job's fields or a snapshot's configuration), validated: a stored
    value of the wrong shape is a Sluice-side fault (``SettingsUnresolvable``)."""
    values: dict[str, Any] = {name: config.get(name) for name in SETTING_FIELDS}
    problem = settings_problem(values)
    if problem is not None:
        raise SettingsUnresolvable(f"version {version_id}: {problem}")
    return checked_settings(values, version, version_id)


def checked_settings(config: Mapping[str, Any], version: int, version_id: str) -> ExecutionSettings:
    """The settings in ``config`` that the same clauses have already passed: the live job's, as the start
    statement returns them for a run it started (its SQL holds them to ``shared.runs.admission.SETTINGS``)."""
    return ExecutionSettings(
        endpoint_url=config["endpoint_url"], fallback_endpoint_url=config["fallback_endpoint_url"] or None,
        timeout_secs=config["timeout_secs"], max_attempts=config["max_attempts"],
        retry_strategy=config["retry_strategy"] or "exponential",
        retry_delays_secs=tuple(config["retry_delays_secs"] or ()), version=version, version_id=version_id)


def snapshot_settings(session: Session, job_id: str, version_id: str) -> ExecutionSettings:
    """The settings of the job's version snapshot ``version_id``."""
    snapshot = find_version(session, job_id, version_id)
    if snapshot is None:
        raise SettingsUnresolvable(f"job version {version_id} not found")
    config = snapshot["config"]
    if not isinstance(config, Mapping):
        raise SettingsUnresolvable(f"job version {version_id} has no configuration")
    return settings_of(config, int(snapshot["version"]), str(snapshot["id"]))


def resolve_execution_settings(session: Session, run: Run, job: Job) -> ExecutionSettings:
    """The settings this attempt of ``run`` uses; ``job`` must be the live row of ``run.job_id``."""
    candidate = {"id": run.id, "job_version_id": run.job_version_id, "version_policy": job.version_policy,
                 "backwards_compatible": job.backwards_compatible, "version_id": job.version_id}
    if not _KNOWN_POLICY.predicate(candidate, {}):
        raise SettingsUnresolvable(f"unknown version_policy {job.version_policy!r}")
    if _LIVE_SETTINGS.predicate(candidate, {}):
        return settings_of({name: getattr(job, name) for name in SETTING_FIELDS}, job.version, job.version_id)
    return snapshot_settings(session, job.id, run.job_version_id)


def effective_max_attempts(run: Run, settings: ExecutionSettings) -> int:
    """``max_attempts_override`` or the resolved ``max_attempts``."""
    return run.max_attempts_override or settings.max_attempts
