"""Everything a request passes before its view runs, in the contract's precedence order (§1.5):

route 404/405 → 401 → scope 403 → (429) → 413 → 415 → JSON syntax 400 → NUL 422.
Schema validation (422) then happens in the view's decorators, on the body parsed here once.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from flask import Flask, current_app, g, request

from api.auth import authenticate_request
from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from shared.ids import uuid7

MAX_BODY_BYTES = 1 << 20
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = {"POST", "PATCH", "PUT"}
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_NUL_ESCAPE = b"\\u0000"


def optional_body(view: Any) -> Any:
    """Mark a view whose body is optional: an empty body means ``{}`` with or without Content-Type."""
    view.optional_body = True
    return view


def request_id_for(incoming: str) -> str:
    """The request's id: the caller's ``X-Request-Id`` when it is well-formed, else a new one."""
    return incoming if _REQUEST_ID_RE.match(incoming) else uuid7()


def may_hold_nul_or_surrogate(raw: bytes) -> bool:
    """Whether a JSON body could hold a NUL or a lone surrogate, which only these bytes can carry."""
    return b"\x00" in raw or _NUL_ESCAPE in raw or _SURROGATE_ESCAPE.search(raw) is not None


def _assign_request_id() -> None:
    g.request_id = request_id_for(request.headers.get("X-Request-Id", ""))
    g.started = time.perf_counter()


def _has_nul(text: str) -> bool:
    return "\x00" in text


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _find_nul(value: Any, path: str, bad: Any = _has_nul) -> str | None:
    """The path of the first string (key or value) for which ``bad`` holds, or ``None``."""
    if isinstance(value, str):
        return path if bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if bad(key):
                return f"{path}.{key}" if path else key
            found = _find_nul(item, f"{path}.{key}" if path else key, bad)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_nul(item, f"{path}.{index}" if path else str(index), bad)
            if found:
                return found
    return None


def _nested_error(path: str, message: str) -> dict[str, Any]:
    parts = path.split(".") if path else ["_schema"]
    tree: dict[str, Any] = {parts[-1]: [message]}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def _read_body(view: Any) -> None:
    """Parse the JSON body once into ``g.body`` (``None`` when the request has no body)."""
    g.body = None
    if request.method not in _BODY_METHODS:
        return
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    raw = request.get_data(cache=True)  # werkzeug enforces MAX_CONTENT_LENGTH on chunked bodies (413)
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    is_optional = getattr(view, "optional_body", False)
    if not raw.strip():
        if is_optional:
            g.body = {}
            return
        if not request.mimetype or request.mimetype != "application/json":
            raise UnsupportedMediaType()
        raise BadRequest("Malformed JSON body: the body is empty")
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    try:
        g.body = json.loads(raw)
        # UTF-8 JSON can only carry NUL as the escape \u0000 (a raw control byte is a syntax error), so the
        # walk runs only for bodies holding that sequence, or any 0x00 byte (UTF-16/32, which json accepts).
        wide = b"\x00" in raw
        bad = _find_nul(g.body, "") if wide or _NUL_ESCAPE in raw else None
        # A lone surrogate can only arrive as a \uD800-\uDFFF escape (raw surrogate bytes are not UTF-8);
        # it cannot be stored or re-encoded, so refuse it like NUL. The byte scan keeps the walk rare.
        lone = _find_nul(g.body, "", _has_lone_surrogate) if wide or _SURROGATE_ESCAPE.search(raw) else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("Malformed JSON body") from exc
    except RecursionError:  # a body nested deeper than the interpreter's stack allows
        raise BadRequest("Malformed JSON body: nested too deeply") from None
    if bad is not None:
        raise ValidationFailed(_nested_error(bad, "Must not contain the NUL character (U+0000)."))
    if lone is not None:
        raise ValidationFailed(_nested_error(lone, "Must be valid Unicode (no unpaired surrogate escapes)."))


def before_request() -> None:
    _assign_request_id()
    if request.routing_exception is not None:
        raise request.routing_exception
    view = current_app.view_functions.get(request.endpoint or "")
    if request.path.startswith("/v1/"):
        authenticate_request(getattr(view, "required_scope", None), view)
    _read_body(view)


def install(app: Flask) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.before_request(before_request)
