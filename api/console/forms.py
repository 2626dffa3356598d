"""From an HTML form to the body the API's request schema checks: the console validates what it sends with
the very schemas of the API (``api.schemas``), so a form is refused exactly where a request would be."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import marshmallow as ma

from api.body import refuse_unstorable_text
from shared.errors import ValidationFailed
from shared.json_codec import MAX_DEPTH, nests_deeper


def body_of_form(form: Mapping[str, str], *, text: Iterable[str] = (), integers: Iterable[str] = (),
              json_fields: Iterable[str] = ()) -> dict[str, Any]:
    """The filled-in fields as JSON values: text as is, whole numbers as integers, JSON text parsed. A blank
    field is left out (the API's default applies); a field that does not parse is a 422 under its name."""
    body: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name in text:
        value = form.get(name, "").strip()
        if value:
            body[name] = value
    for name in integers:
        value = form.get(name, "").strip()
        if value:
            try:
                body[name] = int(value)
            except ValueError:
                errors[name] = ["Must be a whole number."]
    for name in json_fields:
        value = form.get(name, "").strip()
        if value and nests_deeper(value):
            errors[name] = [f"Nested deeper than {MAX_DEPTH} levels."]
        elif value:
            try:
                body[name] = json.loads(value)
            except ValueError as exc:
                errors[name] = [f"Not valid JSON: {exc}."]
            else:
                refuse_unstorable_text(body[name], name)
    if errors:
        raise ValidationFailed(errors)
    return body


def load(schema: ma.Schema, body: dict[str, Any]) -> dict[str, Any]:
    """``schema.load(body)``, a refusal as the API's 422 (``ValidationFailed``)."""
    try:
        return schema.load(body)  # type: ignore[no-any-return]
    except ma.ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationFailed(dict(messages)) from None


def flat_errors(errors: Any, prefix: str = "") -> list[str]:
    """A 422's nested ``errors`` as lines ``field: message``."""
    if isinstance(errors, dict):
        return [line for key, value in errors.items()
                for line in flat_errors(value, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(errors, list):
        return [f"{prefix}: {item}" if prefix else str(item) for item in errors]
    return [f"{prefix}: {errors}" if prefix else str(errors)]
