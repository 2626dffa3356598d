"""Settings: read once per process from the environment into a frozen dataclass and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from shared.errors import ConfigError

# libpq's defaults fill in the rest (user and password from PGUSER / PGPASSWORD or the login name).
DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/sluice"
_POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg2://")


def postgres_url(raw: str) -> str:
    """``DATABASE_URL`` as SQLAlchemy takes it: PostgreSQL only. ``postgres://`` (what Heroku-style
    platforms hand out) is read as ``postgresql://``; anything else is refused with the one fix."""
    url = "postgresql://" + raw[len("postgres://"):] if raw.startswith("postgres://") else raw
    if not url.startswith(_POSTGRES_SCHEMES):
        scheme = raw.split(":", 1)[0] if ":" in raw else raw[:20]
        raise ConfigError(f"DATABASE_URL: PostgreSQL is required (postgresql://user:password@host:5432/dbname), "
                          f"got a {scheme!r} URL; to try Sluice without a database server, run `sluice dev`")
    return url


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}")
    return value


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    """A positive integer, or ``None`` when unset, empty or 0 (no cap)."""
    value = _int(env, name, 0)
    return value or None


def _rate_limit(env: Mapping[str, str]) -> tuple[int, int] | None:
    raw = env.get("SLUICE_API_RATE_LIMIT", "").strip()
    if not raw:
        return None
    try:
        count, secs = raw.split("/", 1)
        parsed = (int(count), int(secs))
    except ValueError as exc:
        raise ConfigError(f"SLUICE_API_RATE_LIMIT: expected <n>/<secs>, got {raw!r}") from exc
    if parsed[0] < 1 or parsed[1] < 1:
        raise ConfigError("SLUICE_API_RATE_LIMIT: both numbers must be >= 1")
    return parsed


def _port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port (1..65535); unset, empty or ``0`` is ``None``."""
    value = _int(env, name, 0)
    if value > 65535:
        raise ConfigError(f"{name}: must be 0..65535")
    return value or None


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    allow_private_endpoints: bool = False
    cron_misfire_grace_secs: int = 60
    heartbeat_interval_secs: int = 10
    stale_after_secs: int = 60
    lease_margin_secs: int = 30
    slot_retry_secs: int = 1
    api_rate_limit: tuple[int, int] | None = None
    # Not in the contract: operational knobs with documented defaults (README, deploy/README.md).
    sweep_interval_secs: float = 1.0
    scheduler_sync_secs: int = 10  # how often cron entries are re-read (≤ 25 s: changes seen within 30 s)
    log_level: str = "INFO"
    log_json: bool = True
    worker_threads: int = 8
    ca_bundle: str | None = None  # PEM file of extra CAs trusted for endpoint and webhook TLS
    # Fair share between projects: optional caps per project (None: no cap).
    project_max_executing: int | None = None  # executing attempts of one project at once
    project_max_timeout_secs: int | None = None  # an attempt's timeout, whatever its job or trigger asks
    retention_days: int | None = None  # finished runs (events, deliveries) older than this are pruned
    # The API's /metrics on a port of its own (then not on the public port); None = on the public port.
    api_metrics_port: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=postgres_url(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
            redis_url=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            allow_private_endpoints=_bool(env, "SLUICE_ALLOW_PRIVATE_ENDPOINTS", False),
            cron_misfire_grace_secs=_int(env, "SLUICE_CRON_MISFIRE_GRACE_SECS", 60),
            heartbeat_interval_secs=_int(env, "SLUICE_HEARTBEAT_INTERVAL_SECS", 10, minimum=1),
            stale_after_secs=_int(env, "SLUICE_STALE_AFTER_SECS", 60, minimum=1),
            lease_margin_secs=_int(env, "SLUICE_LEASE_MARGIN_SECS", 30),
            slot_retry_secs=_int(env, "SLUICE_SLOT_RETRY_SECS", 1),
            api_rate_limit=_rate_limit(env),
            scheduler_sync_secs=_int(env, "SLUICE_SCHEDULER_SYNC_SECS", 10, minimum=1),
            log_level=(env.get("SLUICE_LOG_LEVEL") or "INFO").upper(),
            log_json=_bool(env, "SLUICE_LOG_JSON", True),
            worker_threads=_int(env, "SLUICE_WORKER_THREADS", 8, minimum=1),
            ca_bundle=env.get("SLUICE_CA_BUNDLE") or None,
            project_max_executing=_optional_int(env, "SLUICE_PROJECT_MAX_EXECUTING"),
            project_max_timeout_secs=_optional_int(env, "SLUICE_PROJECT_MAX_TIMEOUT_SECS"),
            retention_days=_optional_int(env, "SLUICE_RETENTION_DAYS"),
            api_metrics_port=_port(env, "SLUICE_API_METRICS_PORT"),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
