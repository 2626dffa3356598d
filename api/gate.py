"""Everything a request passes before its view runs, in the contract's precedence order (§1.5):

route 404/405 → 401 → scope 403 → (429) → NUL in the path or query 400 → 413 → 415 → JSON syntax 400 →
NUL 422.
Schema validation (422) then happens in the view's decorators, on the body parsed here once.
"""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Flask, current_app, g, request

from api.auth import authenticate_request
from api.body import MAX_BODY_BYTES, NUL_MESSAGE, parse_json_body
from shared.errors import BadRequest, PayloadTooLarge, ValidationFailed
from shared.ids import uuid7

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = {"POST", "PATCH", "PUT"}


def optional_body(view: Any) -> Any:
    """Mark a view whose body is optional: an empty body means ``{}`` with or without Content-Type."""
    view.optional_body = True
    return view


def form_body(view: Any) -> Any:
    """Mark a view that reads an HTML form (the console): its body is not JSON and is left to the view."""
    view.form_body = True
    return view


def request_id_for(incoming: str) -> str:
    """The request's id: the caller's ``X-Request-Id`` when it is well-formed, else a new one."""
    return incoming if _REQUEST_ID_RE.fullmatch(incoming) else uuid7()


def _read_body(view: Any) -> None:
    """Parse the JSON body once into ``g.body`` (``None`` when the request has no body)."""
    g.body = None
    if request.method not in _BODY_METHODS:
        return
    if getattr(view, "form_body", False):
        _refuse_nul_in_form()
        return
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    raw = request.get_data(cache=True)  # werkzeug enforces MAX_CONTENT_LENGTH on chunked bodies (413)
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    g.body = parse_json_body(raw, request.mimetype, optional=getattr(view, "optional_body", False))


def before_request() -> None:
    g.request_id = request_id_for(request.headers.get("X-Request-Id", ""))
    g.started = time.perf_counter()
    if request.routing_exception is not None:
        raise request.routing_exception
    view = current_app.view_functions.get(request.endpoint or "")
    if request.path.startswith("/v1/"):
        authenticate_request(getattr(view, "required_scope", None), view)
    _refuse_nul()
    _read_body(view)


def _refuse_nul() -> None:
    """A NUL character (``%00``) in the path or a query argument is a 400: no id, slug, filter or cursor can
    hold one, and PostgreSQL text cannot store one."""
    if "\x00" in request.path:
        raise BadRequest("path: must not contain the NUL character (%00)")
    for name, value in request.args.items(multi=True):
        if "\x00" in name or "\x00" in value:
            raise BadRequest(f"{name.replace(chr(0), '')}: must not contain the NUL character (%00)")


def _refuse_nul_in_form() -> None:
    """A form field holding NUL is a 422 under its name, as a string in a JSON body is."""
    for name, value in request.form.items(multi=True):
        if "\x00" in name or "\x00" in value:
            raise ValidationFailed({name.replace("\x00", "") or "_schema": [NUL_MESSAGE]})


def install(app: Flask) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.before_request(before_request)
