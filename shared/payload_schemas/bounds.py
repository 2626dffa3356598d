"""What a payload schema may be, checked when a job is written (each problem is the job's 400).

- **Size**: its canonical JSON at most ``MAX_SCHEMA_BYTES``.
- **Fan-out**: the subschemas one value may be checked against, counting every ``$ref`` as the schema it
  names, at most ``MAX_FAN_OUT``. A few kilobytes of ``anyOf`` over ``$ref`` over ``anyOf`` can name 2^40
  subschemas; that is refused here instead of running at trigger time. A reference back to a schema being
  expanded (a recursive schema: trees, linked lists) counts once: its depth is the payload's.
- **Patterns**: every ``pattern`` and ``patternProperties`` name compiles on RE2 (``patterns``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from shared.payload_schemas.patterns import PatternError, compile_pattern

MAX_SCHEMA_BYTES = 128 * 1024
MAX_FAN_OUT = 20_000
_MAX_EXPANSION_DEPTH = 200  # schema nesting plus $ref hops while counting (the body nests at most 128)

# Where 2020-12 (and the older drafts jsonschema still reads) keep subschemas.
_ONE = frozenset({"additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else",
                  "unevaluatedItems", "unevaluatedProperties", "additionalItems", "contentSchema"})
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_REFS = ("$ref", "$dynamicRef")


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is refused (the message after ``payload_schema: ``), or ``None``."""
    size = len(json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_SCHEMA_BYTES:
        return f"schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB ({size} bytes)"
    for where, pattern in schema_patterns(schema):
        try:
            compile_pattern(pattern)
        except PatternError as exc:
            return f"{where} {json.dumps(pattern, ensure_ascii=False)} is {exc}"
    try:
        fan_out = _FanOut(schema).count(schema, 0, ())
    except RecursionError:
        return "schema is nested too deeply"
    if fan_out > MAX_FAN_OUT:
        return (f"schema fans out to more than {MAX_FAN_OUT} subschemas per value (through $ref and "
                "applicators such as anyOf); make it smaller or less repetitive")
    return None


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every object subschema of ``schema`` (itself first), in schema positions only (``enum``, ``const``,
    ``default`` and ``examples`` are data). Iterative: depth is the writer's choice."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        stack.extend(_children(node))


def schema_patterns(schema: Any) -> Iterator[tuple[str, str]]:
    """(``"pattern"`` or ``"patternProperties name"``, the pattern) of every subschema."""
    for node in subschemas(schema):
        if isinstance(node.get("pattern"), str):
            yield "pattern", node["pattern"]
        if isinstance(node.get("patternProperties"), dict):
            for name in node["patternProperties"]:
                yield "patternProperties name", name


def _children(node: dict[str, Any]) -> list[Any]:
    children: list[Any] = []
    for key, value in node.items():
        if key in _ONE and isinstance(value, dict):
            children.append(value)
        elif key in _LIST and isinstance(value, list):
            children.extend(value)
        elif key in _MAP and isinstance(value, dict):
            children.extend(value.values())
    return children


class _FanOut:
    """Counts subschemas with every local ``$ref`` expanded (memoised per schema; capped while counting)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.memo: dict[int, int] = {}

    def count(self, node: Any, depth: int, expanding: tuple[int, ...]) -> int:
        if not isinstance(node, dict):
            return 1
        if depth > _MAX_EXPANSION_DEPTH:
            raise RecursionError
        key = id(node)
        if key in expanding:
            return 1  # recursive schema: bounded by the payload's depth, not by the schema
        if key in self.memo:
            return self.memo[key]
        inner = (*expanding, key)
        total = 1
        for child in _children(node):
            total = min(total + self.count(child, depth + 1, inner), MAX_FAN_OUT + 1)
        for ref_keyword in _REFS:
            target = self._target(node.get(ref_keyword))
            if target is not None:
                total = min(total + self.count(target, depth + 1, inner), MAX_FAN_OUT + 1)
        self.memo[key] = total
        return total

    def _target(self, ref: Any) -> Any:
        """The subschema a local JSON-pointer reference names (``#``, ``#/$defs/a``), else ``None`` (an anchor
        or a relative URI: not counted here; the time budget at trigger time bounds it)."""
        if not isinstance(ref, str) or not ref.startswith("#") or (len(ref) > 1 and ref[1] != "/"):
            return None
        node = self.root
        for token in ref[2:].split("/") if len(ref) > 1 else ():
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        return node
