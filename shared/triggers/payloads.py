"""Trigger payloads (CONTRACT §4.5, §4.2 step 4): canonical form, hash, and ``payload_schema`` checks.

The canonical form is what is stored and sent to the endpoint byte for byte, so dedup compares bytes.
Schemas are full JSON Schema 2020-12 with ``format`` as annotation only; validators are compiled once per
distinct schema (cached by its canonical text) because the trigger hot path checks every payload.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

MAX_PAYLOAD_BYTES = 1 << 20
MAX_SCHEMA_MESSAGES = 20
EMPTY_PAYLOAD = "{}"
EMPTY_PAYLOAD_HASH = hashlib.sha256(EMPTY_PAYLOAD.encode()).hexdigest()


def canonical_payload(payload: Any) -> str:
    """Keys sorted at every level, no spaces, non-ASCII kept as UTF-8 (the exact §4.5 recipe).

    Raises ``ValueError`` for NaN or Infinity, which Python parses but JSON does not have.
    """
    if payload is None:
        return EMPTY_PAYLOAD
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def payload_hash(canonical: str) -> str:
    """Lowercase hex SHA-256 of the canonical payload's UTF-8 bytes."""
    if canonical == EMPTY_PAYLOAD:
        return EMPTY_PAYLOAD_HASH
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def payload_size_error(canonical: str) -> str | None:
    """The 422 message when the canonical payload exceeds 1 MiB, else ``None``."""
    # Each character is at most 4 UTF-8 bytes: skip the encode for the common small payload.
    if len(canonical) * 4 <= MAX_PAYLOAD_BYTES or len(canonical.encode("utf-8")) <= MAX_PAYLOAD_BYTES:
        return None
    return "Canonical payload must be at most 1 MiB (1048576 bytes)."


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Draft202012Validator:
    # An empty registry: nothing is ever fetched (remote $refs are refused when the job is written).
    return Draft202012Validator(json.loads(schema_text), registry=Registry())


def _path_text(parts: list[Any]) -> str:
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            text += f".{part}"
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def _message(error: ValidationError) -> str:
    parts = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.validator_value, list):
        # Name the missing property in the path, as in `$.user.id: 'id' is a required property`.
        for name in error.validator_value:
            if error.message == f"{name!r} is a required property":
                parts.append(name)
                break
    return f"{_path_text(parts)}: {error.message}"


def schema_errors(schema: dict[str, Any] | None, payload: Any) -> list[str]:
    """Up to 20 messages, each prefixed by the instance path; empty when the payload conforms."""
    if not schema:
        return []
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    messages: list[str] = []
    try:
        for error in validator.iter_errors(payload):
            messages.append(_message(error))
            if len(messages) >= MAX_SCHEMA_MESSAGES:
                break
    except Unresolvable as exc:
        messages.append(f"$: payload_schema cannot be evaluated ({type(exc).__name__})")
    except RecursionError:
        messages.append("$: payload is nested too deeply to validate")
    return messages
