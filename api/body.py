"""The one JSON body parser of the API, for Flask's gate and the front layer alike.

Its checks, in the contract's order (§1.5, after the body's size): 415 for a body that is not
``application/json``, 400 for one that does not parse or nests arrays and objects deeper than 128 levels
(deeper values would exhaust the stack of whatever walks them later), 422 for a string holding NUL or a
lone surrogate (neither can be stored or re-encoded). An empty body is ``{}`` where the route's body is optional.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from shared.json_codec import MAX_DEPTH, nests_deeper

MAX_BODY_BYTES = 1 << 20
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_NUL_ESCAPE = b"\\u0000"
_TOO_DEEP = f"Malformed JSON body: nested deeper than {MAX_DEPTH} levels"
NUL_MESSAGE = "Must not contain the NUL character (U+0000)."


def parse_json_body(raw: bytes, mimetype: str, *, optional: bool) -> Any:
    """The parsed body; ``mimetype`` is the Content-Type without parameters, lower case ("" without one)."""
    if not raw.strip():
        if optional:
            return {}
        if mimetype != "application/json":
            raise UnsupportedMediaType()
        raise BadRequest("Malformed JSON body: the body is empty")
    if mimetype != "application/json":
        raise UnsupportedMediaType()
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads(raw) would decode
        if nests_deeper(text):
            raise BadRequest(_TOO_DEEP)
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("Malformed JSON body") from exc
    # UTF-8 JSON can only carry NUL as the escape \u0000 (a raw control byte is a syntax error), and a lone
    # surrogate only as a \uD800-\uDFFF escape (raw surrogate bytes are not UTF-8); any 0x00 byte means
    # UTF-16/32, which json accepts. The byte scans keep the walk over the body rare.
    if b"\x00" in raw or _NUL_ESCAPE in raw or _SURROGATE_ESCAPE.search(raw):
        refuse_unstorable_text(body)
    return body


def refuse_unstorable_text(value: Any, path: str = "") -> None:
    """A 422 naming the first string (key or value) in ``value`` that holds NUL or a lone surrogate, under
    ``path``: PostgreSQL cannot store the one, and neither can be re-encoded as UTF-8."""
    bad = _find(value, path, _has_nul)
    if bad is not None:
        raise ValidationFailed(_nested_error(bad, NUL_MESSAGE))
    lone = _find(value, path, _has_lone_surrogate)
    if lone is not None:
        raise ValidationFailed(_nested_error(lone, "Must be valid Unicode (no unpaired surrogate escapes)."))


def _has_nul(text: str) -> bool:
    return "\x00" in text


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _find(value: Any, path: str, bad: Any) -> str | None:
    """The path of the first string (key or value) for which ``bad`` holds, or ``None``."""
    if isinstance(value, str):
        return path if bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if bad(key):
                return f"{path}.{key}" if path else key
            found = _find(item, f"{path}.{key}" if path else key, bad)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find(item, f"{path}.{index}" if path else str(index), bad)
            if found:
                return found
    return None


def _nested_error(path: str, message: str) -> dict[str, Any]:
    parts = path.split(".") if path else ["_schema"]
    tree: dict[str, Any] = {parts[-1]: [message]}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree
