"""Strict fields for the contract's no-coercion rule (§1.1): ``"5"``, ``5.0`` and ``true`` are not
integers, ``"true"`` is not a boolean. Query-string fields parse text as the contract says."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import marshmallow as ma

from shared.clock import parse_ts


class StrictInteger(ma.fields.Integer):
    """An integer that must arrive as a JSON integer (bool excluded)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class StrictBoolean(ma.fields.Boolean):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictString(ma.fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return value


class Timestamp(ma.fields.Field):
    """RFC 3339 with an explicit offset in; aware UTC datetime out of ``load``."""

    default_error_messages = {"invalid": "Must be an RFC 3339 timestamp with an offset (Z or ±hh:mm)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        try:
            return parse_ts(value)
        except (ValueError, TypeError) as exc:
            raise self.make_error("invalid") from exc


class StringMap(ma.fields.Dict):
    """A map of str → str with entry-count and length limits (§1.7 tags / metadata)."""

    def __init__(self, *, max_entries: int, max_value_len: int, max_key_len: int = 64, **kwargs: Any) -> None:
        super().__init__(keys=StrictString(), values=StrictString(), **kwargs)
        self.max_entries = max_entries
        self.max_value_len = max_value_len
        self.max_key_len = max_key_len

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        errors: dict[str, list[str]] = {}
        if len(value) > self.max_entries:
            raise ma.ValidationError(f"At most {self.max_entries} entries.")
        for key, item in value.items():
            if not 1 <= len(key) <= self.max_key_len:
                errors[key] = [f"Keys must be 1..{self.max_key_len} characters."]
            elif not isinstance(item, str):
                errors[key] = ["Values must be strings."]
            elif len(item) > self.max_value_len:
                errors[key] = [f"Values must be at most {self.max_value_len} characters."]
        if errors:
            raise ma.ValidationError(errors)
        return dict(value)


class AnyJSON(ma.fields.Raw):
    """Any JSON value, passed through untouched."""


class QueryBoolean(ma.fields.Boolean):
    """``true``/``false``/``1``/``0`` in any case; anything else is 422 (documented as a boolean)."""

    default_error_messages = {"invalid": "Must be one of true, false, 1, 0."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        lowered = str(value).strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise self.make_error("invalid")


class QueryInteger(ma.fields.Integer):
    """A decimal integer in a query string (documented as an integer)."""

    default_error_messages = {"invalid": "Must be a decimal integer."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        text = str(value).strip()
        if not text.isascii() or not text or not (text.isdigit() or (text[0] in "+-" and text[1:].isdigit())) \
                or len(text) > 18:
            raise self.make_error("invalid")
        return int(text)


class BaseSchema(ma.Schema):
    """Unknown fields are ignored (§1.1): the SDK and read-modify-write clients send extra keys."""

    class Meta:
        unknown = ma.EXCLUDE
