"""The one error tree. Domain code raises these; the HTTP edge maps each to one JSON error shape.

Every error that reaches a client carries an HTTP status and a human sentence. ``ValidationFailed`` also
carries per-field messages (422 only, CONTRACT §1.4).
"""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    """Base of every error Sluice raises on purpose."""

    status_code = 500
    default_message = "Internal server error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class ConfigError(SluiceError):
    """An operator setting is malformed (raised at process start, never mid-request)."""


class BadRequest(SluiceError):
    """400: semantic rule over the request (cron, timezone, URL policy, cursor, dependencies)."""

    status_code = 400
    default_message = "Bad request"


class Unauthorized(SluiceError):
    status_code = 401
    default_message = "A valid API key is required"


class Forbidden(SluiceError):
    status_code = 403
    default_message = "Forbidden"


class NotFound(SluiceError):
    status_code = 404
    default_message = "Not found"


class Conflict(SluiceError):
    status_code = 409
    default_message = "Conflict"


class PayloadTooLarge(SluiceError):
    """413: a request body over 1 MiB (CONTRACT §1.7)."""

    status_code = 413
    default_message = "Request body exceeds 1 MiB"


class UnsupportedMediaType(SluiceError):
    """415: a body that is not ``application/json``."""

    status_code = 415
    default_message = "Content-Type must be application/json"


class ValidationFailed(SluiceError):
    """422 with per-field messages mirroring the request body."""

    status_code = 422
    default_message = "Validation failed"

    def __init__(self, errors: dict[str, Any], message: str | None = None) -> None:
        super().__init__(message)
        self.errors = errors


class TooManyRequests(SluiceError):
    status_code = 429
    default_message = "Too many requests"

    def __init__(self, retry_after_secs: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_secs = retry_after_secs


def semantic(field: str, message: str) -> BadRequest:
    """A 400 whose sentence names the field, as in CONTRACT §2.2 (``cron: invalid expression ...``)."""
    err = BadRequest(f"{field}: {message}")
    err.field = field  # type: ignore[attr-defined]
    return err
