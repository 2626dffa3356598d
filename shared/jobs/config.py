"""A job's writable configuration (CONTRACT §2.1, §2.3): field list, defaults, normalisation, snapshots.

A *configuration* is a plain dict holding every W field. It is what a version stores (secret included),
what a PATCH merges into, and what "did anything change?" compares. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Every writable field, in the order of the seed's Job object.
W_FIELDS: tuple[str, ...] = (
    "group_id", "name", "slug", "description", "cron", "payload_schema", "tags", "endpoint_url",
    "fallback_endpoint_url", "max_attempts", "timeout_secs", "max_concurrency", "execution_window_cron",
    "timezone", "rate_limit_max", "rate_limit_window_secs", "max_concurrency_per_key", "rate_limit_keys",
    "default_run_metadata", "dedup_window_secs", "enabled", "webhook_url", "webhook_secret", "run_ttl_secs",
    "retry_strategy", "retry_delays_secs", "environment_id", "version_policy", "backwards_compatible",
    "webhook_secret_previous",
)

# The value of every optional field when unset; also what PATCH `null` restores (§3.5).
DEFAULTS: dict[str, Any] = {
    "group_id": None, "description": None, "cron": None, "payload_schema": None, "tags": {},
    "fallback_endpoint_url": None, "max_attempts": 3, "timeout_secs": 300, "max_concurrency": None,
    "execution_window_cron": None, "timezone": "UTC", "rate_limit_max": None, "rate_limit_window_secs": None,
    "max_concurrency_per_key": None, "rate_limit_keys": [], "default_run_metadata": {},
    "dedup_window_secs": None, "enabled": True, "webhook_url": None, "webhook_secret": None,
    "run_ttl_secs": None, "retry_strategy": "exponential", "retry_delays_secs": [], "environment_id": None,
    "version_policy": "pin", "backwards_compatible": False, "webhook_secret_previous": None,
}

# "" for these means null (§2.3).
OPTIONAL_STRINGS: frozenset[str] = frozenset({
    "group_id", "description", "cron", "execution_window_cron", "environment_id", "fallback_endpoint_url",
    "webhook_url", "webhook_secret", "webhook_secret_previous",
})

# 0 for these means null = unlimited / never (§2.1).
NULLABLE_LIMITS: frozenset[str] = frozenset({
    "max_concurrency", "max_concurrency_per_key", "rate_limit_max", "rate_limit_window_secs",
    "dedup_window_secs", "run_ttl_secs",
})

# Changing any of these moves jobs.schedule_changed_at: earlier ticks never count as missed (§6.4).
SCHEDULE_FIELDS: frozenset[str] = frozenset({"cron", "timezone", "enabled"})

URL_FIELDS: tuple[str, ...] = ("endpoint_url", "fallback_endpoint_url", "webhook_url")

# Stored sealed, shown masked; the current secret first (shared.jobs.secrets).
SECRET_FIELDS: tuple[str, ...] = ("webhook_secret", "webhook_secret_previous")


def _copy(value: Any) -> Any:
    """A detached copy of a JSON value so a configuration never aliases a request body or a row."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def normalise_value(field: str, value: Any) -> Any:
    """One supplied value after §2.3: ``""`` → null, ``0`` → null for limits, null → the default."""
    is_empty_string = value == "" and field in OPTIONAL_STRINGS
    is_zero_limit = field in NULLABLE_LIMITS and value == 0 and not isinstance(value, bool)
    if is_empty_string or is_zero_limit:
        value = None
    if value is None:
        return _copy(DEFAULTS.get(field))
    return _copy(value)


def normalise_fields(supplied: Mapping[str, Any]) -> dict[str, Any]:
    """The supplied W fields (already schema-valid) normalised; other keys are dropped."""
    return {f: normalise_value(f, supplied[f]) for f in W_FIELDS if f in supplied}


def config_for_create(supplied: Mapping[str, Any]) -> dict[str, Any]:
    """A full configuration from a create body: defaults, overlaid with the normalised supplied fields."""
    config = {f: _copy(DEFAULTS.get(f)) for f in W_FIELDS}
    config.update(normalise_fields(supplied))
    return config


def config_of(job: Any) -> dict[str, Any]:
    """The configuration stored on a job (an ORM object, a Row or a mapping with attribute access)."""
    if isinstance(job, Mapping):
        return {f: _copy(job[f]) for f in W_FIELDS}
    return {f: _copy(getattr(job, f)) for f in W_FIELDS}


def merge(stored: Mapping[str, Any], supplied: Mapping[str, Any]) -> dict[str, Any]:
    """PATCH semantics (§3.5): absent = unchanged, supplied values normalised, null = default."""
    merged = dict(stored)
    merged.update(normalise_fields(supplied))
    return merged


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """W fields whose value differs. JSON values compare structurally (key order is irrelevant)."""
    return [f for f in W_FIELDS if _differs(old.get(f), new.get(f))]


def _differs(a: Any, b: Any) -> bool:
    # bool is an int in Python: True == 1 must still count as a change of type.
    if isinstance(a, bool) != isinstance(b, bool):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is not type(b) and not (_is_number(a) and _is_number(b))) or a != b


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
