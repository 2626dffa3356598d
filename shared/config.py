"""Settings: read once per process from the environment into a frozen dataclass and passed down."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

from shared.egress.addresses import AddressPolicy
from shared.errors import ConfigError
from shared.urls import split_url
from shared.webhooks.sealing import SecretBox, parse_keys

_POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg2://")


def postgres_url(raw: str) -> str:
    """``DATABASE_URL`` as SQLAlchemy takes it: PostgreSQL only. ``postgres://`` (what Heroku-style
    platforms hand out) is read as ``postgresql://``; anything else is refused with the one fix."""
    url = "postgresql://" + raw[len("postgres://"):] if raw.startswith("postgres://") else raw
    if not url.startswith(_POSTGRES_SCHEMES):
        scheme = raw.split(":", 1)[0] if ":" in raw else raw[:20]
        raise ConfigError(f"DATABASE_URL: PostgreSQL is required (postgresql://user:password@host:5432/dbname), "
                          f"got a {scheme!r} URL; to try Sluice without a database server, run `sluice dev`")
    if split_url(url) is None:  # not the URL in the message: it may hold a password
        raise ConfigError("DATABASE_URL: not a URL PostgreSQL can be reached at "
                          "(postgresql://user:password@host:5432/dbname)")
    return url


def _database_url(env: Mapping[str, str]) -> str:
    raw = (env.get("DATABASE_URL") or "").strip()
    if not raw:
        raise ConfigError("DATABASE_URL is not set: point it at PostgreSQL "
                          "(postgresql://user:password@host:5432/dbname); to try Sluice without a database server, "
                          "run `sluice dev`")
    return postgres_url(raw)


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
    unit = " of seconds" if name.endswith("_SECS") else ""
    try:
        value = int(raw.strip())
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number{unit}, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be a whole number{unit} of at least {minimum}, got {raw!r}")
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


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or CIDR ranges, each normalised (``10.0.0.7/8`` → ``10.0.0.0/8``)."""
    networks = []
    for part in (p.strip() for p in (env.get(name) or "").split(",")):
        if not part:
            continue
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError as exc:
            raise ConfigError(f"{name}: {part!r} is not an IP address or CIDR range") from exc
    return tuple(networks)


def _allowlist(env: Mapping[str, str]) -> tuple[str, ...]:
    """``SLUICE_ALLOWED_PRIVATE_ENDPOINTS``: comma- or space-separated networks, addresses and host names."""
    raw = env.get("SLUICE_ALLOWED_PRIVATE_ENDPOINTS", "")
    entries = tuple(entry for entry in raw.replace(",", " ").split() if entry)
    try:
        AddressPolicy.parse(False, entries)
    except ValueError as exc:
        raise ConfigError(f"SLUICE_ALLOWED_PRIVATE_ENDPOINTS: {exc}") from exc
    return entries


def _secret_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """The keys webhook secrets are sealed with, current first: ``SLUICE_SECRET_KEY`` (comma- or
    space-separated) or ``SLUICE_SECRET_KEY_FILE`` (one key per line, ``#`` comments), never both."""
    inline, path = env.get("SLUICE_SECRET_KEY", "").strip(), env.get("SLUICE_SECRET_KEY_FILE", "").strip()
    if inline and path:
        raise ConfigError("SLUICE_SECRET_KEY and SLUICE_SECRET_KEY_FILE are both set; set one")
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                text = "\n".join(line.split("#", 1)[0] for line in file)
        except OSError as exc:
            raise ConfigError(f"SLUICE_SECRET_KEY_FILE: cannot read {path!r}: {exc.strerror}") from exc
        keys = parse_keys(text.replace(",", " ").split(), "SLUICE_SECRET_KEY_FILE")
        if not keys:
            raise ConfigError(f"SLUICE_SECRET_KEY_FILE: {path!r} holds no key")
        return keys
    return parse_keys(inline.replace(",", " ").split(), "SLUICE_SECRET_KEY")


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
    allowed_private_endpoints: tuple[str, ...] = ()  # networks, addresses, host names (``*.domain``)
    cron_misfire_grace_secs: int = 60
    heartbeat_interval_secs: int = 10
    stale_after_secs: int = 60
    lease_margin_secs: int = 30
    slot_retry_secs: int = 1
    api_rate_limit: tuple[int, int] | None = None
    # Not in the contract: operational knobs with documented defaults (README, deploy/README.md).
    # The longest a scheduler sweep sleeps: the safety net for work nobody announced (scheduler.maintenance).
    sweep_interval_secs: float = 5.0
    scheduler_sync_secs: int = 10  # how often cron entries are re-read (≤ 25 s: changes seen within 30 s)
    log_level: str = "INFO"
    log_json: bool = True
    worker_threads: int = 8
    ca_bundle: str | None = None  # PEM file of extra CAs trusted for endpoint and webhook TLS
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-* the API honours (api.forwarded)
    secret_keys: tuple[str, ...] = field(default=(), repr=False)  # seal webhook secrets; the first seals
    # Fair share between projects: optional caps per project (None: no cap).
    project_max_executing: int | None = None  # executing attempts of one project at once
    project_max_timeout_secs: int | None = None  # an attempt's timeout, whatever its job or trigger asks
    retention_days: int | None = None  # finished runs (events, deliveries) older than this are pruned
    # The API's /metrics on a port of its own (then not on the public port); None = on the public port.
    api_metrics_port: int | None = None
    metrics_gauge_secs: int = 5  # the API's /metrics gauges are sampled at most once per this many seconds
    api_statement_timeout_secs: int = 30  # PostgreSQL cancels an API statement running longer (0 = never)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return check_together(cls(
            database_url=_database_url(env),
            redis_url=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            allow_private_endpoints=_bool(env, "SLUICE_ALLOW_PRIVATE_ENDPOINTS", False),
            allowed_private_endpoints=_allowlist(env),
            cron_misfire_grace_secs=_int(env, "SLUICE_CRON_MISFIRE_GRACE_SECS", 60),
            heartbeat_interval_secs=_int(env, "SLUICE_HEARTBEAT_INTERVAL_SECS", 10, minimum=1),
            stale_after_secs=_int(env, "SLUICE_STALE_AFTER_SECS", 60, minimum=1),
            lease_margin_secs=_int(env, "SLUICE_LEASE_MARGIN_SECS", 30),
            slot_retry_secs=_int(env, "SLUICE_SLOT_RETRY_SECS", 1),
            api_rate_limit=_rate_limit(env),
            scheduler_sync_secs=_int(env, "SLUICE_SCHEDULER_SYNC_SECS", 10, minimum=1),
            sweep_interval_secs=float(_int(env, "SLUICE_SWEEP_INTERVAL_SECS", 5, minimum=1)),
            log_level=(env.get("SLUICE_LOG_LEVEL") or "INFO").upper(),
            log_json=_bool(env, "SLUICE_LOG_JSON", True),
            worker_threads=_int(env, "SLUICE_WORKER_THREADS", 8, minimum=1),
            ca_bundle=env.get("SLUICE_CA_BUNDLE") or None,
            trusted_proxies=_networks(env, "SLUICE_TRUSTED_PROXIES"),
            secret_keys=_secret_keys(env),
            project_max_executing=_optional_int(env, "SLUICE_PROJECT_MAX_EXECUTING"),
            project_max_timeout_secs=_optional_int(env, "SLUICE_PROJECT_MAX_TIMEOUT_SECS"),
            retention_days=_optional_int(env, "SLUICE_RETENTION_DAYS"),
            api_metrics_port=_port(env, "SLUICE_API_METRICS_PORT"),
            metrics_gauge_secs=_int(env, "SLUICE_METRICS_GAUGE_SECS", 5),
            api_statement_timeout_secs=_int(env, "SLUICE_API_STATEMENT_TIMEOUT_SECS", 30),
        ))

    @cached_property
    def address_policy(self) -> AddressPolicy:
        """The outbound address policy of the switch and the allowlist (built once per Settings)."""
        return AddressPolicy.parse(self.allow_private_endpoints, self.allowed_private_endpoints)

    @cached_property
    def secret_box(self) -> SecretBox:
        """Seals and opens webhook secrets; ``ConfigError`` when no key is configured (the API and the
        worker read it at start, so they refuse to run without one)."""
        return SecretBox(self.secret_keys)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


# A live attempt marks itself every heartbeat interval; the reaper treats one silent for ``stale_after_secs``
# as lost. Two missed heartbeats in a row (a slow database write, a GC pause) must not kill a live attempt.
STALE_HEARTBEATS = 2
# The contract promises that a changed cron is picked up within 30 s.
MAX_SCHEDULER_SYNC_SECS = 30


def check_together(settings: Settings) -> Settings:
    """``settings`` if its values make sense together, else ``ConfigError`` naming the settings and the fix."""
    needed = STALE_HEARTBEATS * settings.heartbeat_interval_secs
    if settings.stale_after_secs < needed:
        raise ConfigError(
            f"SLUICE_STALE_AFTER_SECS ({settings.stale_after_secs}) must be at least {STALE_HEARTBEATS} x "
            f"SLUICE_HEARTBEAT_INTERVAL_SECS ({settings.heartbeat_interval_secs}), i.e. >= {needed}: "
            "otherwise live attempts are reaped as lost between two heartbeats")
    if settings.scheduler_sync_secs > MAX_SCHEDULER_SYNC_SECS:
        raise ConfigError(f"SLUICE_SCHEDULER_SYNC_SECS ({settings.scheduler_sync_secs}) must be at most "
                          f"{MAX_SCHEDULER_SYNC_SECS}: a changed cron must be picked up within "
                          f"{MAX_SCHEDULER_SYNC_SECS} s")
    return settings
