"""The one JSON error shape at the HTTP edge (CONTRACT §1.4) and the handlers that produce it."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
import sqlalchemy as sa
from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from shared import json_codec
from shared.errors import SluiceError, TooManyRequests, ValidationFailed

log = logging.getLogger("sluice.api")


def error_body(code: int, message: str, request_id: str | None, errors: Any = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Error resource (``api.resources.ERROR``): also built in front of Flask (``api.front``)."""
    body: dict[str, Any] = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if code == 422:
        body["errors"] = errors if errors is not None else {}
    if extra:
        body.update(extra)
    body["request_id"] = request_id
    return body


UNAVAILABLE_MESSAGE = "A backing service is unavailable; retry shortly"


def error_response(code: int, message: str, errors: Any = None, headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> Response:
    body = error_body(code, message, getattr(g, "request_id", None), errors, extra)
    response = Response(json_codec.dumps(body), status=code, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


_DEFAULT_MESSAGES = {
    400: "Malformed request",
    401: "A valid API key is required",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body exceeds 1 MiB",
    415: "Content-Type must be application/json",
    422: "Validation failed",
}


def _flatten_locations(messages: Any) -> Any:
    """webargs nests errors by location (``json``, ``query``, ``headers``); the contract mirrors the body."""
    if not isinstance(messages, dict):
        return {"_schema": messages if isinstance(messages, list) else [str(messages)]}
    merged: dict[str, Any] = {}
    for location in ("json", "query", "view_args", "path", "headers"):
        part = messages.get(location)
        if isinstance(part, dict):
            merged.update(part)
        elif isinstance(part, list):
            merged.setdefault("_schema", []).extend(part)
    return merged or messages


def handle_http_exception(error: HTTPException) -> Response:
    code = error.code or 500
    data = getattr(error, "data", None) or {}
    headers: dict[str, str] = dict(data.get("headers") or {})
    allowed = getattr(error, "valid_methods", None)
    if code == 405 and allowed:
        headers["Allow"] = ", ".join(sorted(allowed))
    if code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if code == 422:
        errors = _flatten_locations(data.get("messages") or data.get("errors") or {})
        return error_response(422, "Validation failed", errors, headers)
    if code >= 500:
        return error_response(500, "Internal server error")
    if code == 400 and "messages" in data:
        return error_response(400, "Malformed JSON body", headers=headers)
    message = data.get("message") or _DEFAULT_MESSAGES.get(code) or HTTPStatus(code).phrase
    return error_response(code, message, headers=headers)


def handle_sluice_error(error: SluiceError) -> Response:
    if isinstance(error, ValidationFailed):
        return error_response(422, error.message, error.errors)
    headers: dict[str, str] = {}
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(error.retry_after_secs)
    if error.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.status_code >= 500 and error.status_code != 503:
        log.exception("unhandled sluice error", extra={"request_id": getattr(g, "request_id", None)})
        return error_response(500, "Internal server error")
    return error_response(error.status_code, error.message, headers=headers)


UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError,
                redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def unexpected_error(error: Exception, request_id: str | None) -> tuple[int, str]:
    """The status and message of an exception nothing expected, logged: 503 when a backing service is
    unavailable, else 500 (never its text: it may hold internals)."""
    if isinstance(error, UNAVAILABLE):
        log.warning("backing service unavailable: %s", type(error).__name__, extra={"request_id": request_id})
        return 503, UNAVAILABLE_MESSAGE
    log.exception("unhandled error", extra={"request_id": request_id}, exc_info=error)
    return 500, "Internal server error"


def handle_unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    return error_response(*unexpected_error(error, getattr(g, "request_id", None)))


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(SluiceError, handle_sluice_error)
    app.register_error_handler(Exception, handle_unexpected)
