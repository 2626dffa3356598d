"""What ``sluice`` checks before a process role (or ``keys``) starts: its backing services answer and the
database's schema is not behind this release. Each failure is a ``ConfigError`` of one line with the fix."""

from __future__ import annotations

from urllib.parse import urlunsplit

from shared.config import Settings
from shared.db.engine import check_database
from shared.errors import ConfigError
from shared.urls import split_url

CONNECT_TIMEOUT_SECS = 5


def check_serving_database(settings: Settings) -> None:
    """PostgreSQL answers and its schema is this release's (or newer)."""
    from shared.db.schema_version import ShippedSchema

    check_database(settings.database_url, CONNECT_TIMEOUT_SECS, verify=ShippedSchema.load().verify)


def check_redis(redis_url: str) -> None:
    """Redis answers a PING at ``redis_url``."""
    import redis

    parts = split_url(redis_url)
    if parts is None:  # not the URL in the message: it may hold a password
        raise ConfigError("REDIS_URL: not a URL Redis can be reached at (redis://[:password@]host:6379/0)")
    port = parts.port or 6379
    shown = urlunsplit(parts._replace(netloc=f"***@{parts.hostname}:{port}")) if parts.password else redis_url
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=CONNECT_TIMEOUT_SECS,
                                      socket_timeout=CONNECT_TIMEOUT_SECS)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL: {exc}, got {shown!r}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        where = f"{parts.hostname or '127.0.0.1'}:{port}"
        raise ConfigError(f"cannot connect to Redis at {shown} (REDIS_URL): {str(exc).rstrip('.')}; "
                          f"is Redis running at {where}?") from None
    finally:
        client.close()
