"""Trigger payloads (CONTRACT §4.5, §4.2 step 4): canonical form, hash, and ``payload_schema`` checks.

The canonical form is what is stored and sent to the endpoint byte for byte, so dedup compares bytes.
Schemas are full JSON Schema 2020-12 with ``format`` as annotation only, evaluated in bounded time and
memory by ``shared.payload_schemas``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from jsonschema.exceptions import ValidationError

from shared.payload_schemas.evaluation import evaluate

MAX_PAYLOAD_BYTES = 1 << 20
MAX_SCHEMA_MESSAGES = 20
MAX_MESSAGE_CHARS = 500  # a message quotes the value; a 1 MiB string must not make a 1 MiB message
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
    message = f"{_path_text(parts)}: {error.message}"
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS - 1] + "…"


def schema_errors(schema: dict[str, Any] | None, payload: Any) -> list[str]:
    """Up to 20 messages, each prefixed by the instance path; empty when the payload conforms. A schema that
    cannot be evaluated on the payload within its bounds (time, patterns, depth) adds a last ``$:`` message."""
    if not schema:
        return []
    errors, problem = evaluate(schema, payload, max_errors=MAX_SCHEMA_MESSAGES)
    messages = [_message(error) for error in errors]
    if problem is not None:
        messages.append(f"$: {problem}")
    return messages
