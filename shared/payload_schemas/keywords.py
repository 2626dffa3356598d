"""The JSON Schema keywords Sluice evaluates its own way; the rest are jsonschema's.

jsonschema matches ``pattern`` and ``patternProperties`` (also inside ``additionalProperties`` and
``unevaluatedProperties``) with Python's backtracking ``re``, and checks ``uniqueItems`` on arrays of
objects by comparing every pair. Here patterns run on RE2 (``patterns``) and ``uniqueItems`` hashes each
item once. Messages are jsonschema's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import ValidationError

from shared.payload_schemas.patterns import compile_pattern

Keyword = Callable[[Any, Any, Any, dict[str, Any]], Any]


class BudgetExceeded(Exception):
    """The validation in progress ran past its deadline."""


@dataclass(frozen=True)
class Evaluation:
    """One validation in progress (per thread, through a context variable): its deadline on
    ``time.monotonic()`` and the schema's compiled patterns."""

    deadline: float
    patterns: Mapping[str, Any]


CURRENT: ContextVar[Evaluation | None] = ContextVar("sluice_payload_evaluation", default=None)


def check_deadline() -> None:
    """Raise ``BudgetExceeded`` when the validation in progress is past its deadline."""
    current = CURRENT.get()
    if current is not None and time.monotonic() > current.deadline:
        raise BudgetExceeded


def budgeted(keyword: Keyword) -> Keyword:
    """``keyword`` checking the deadline each time it is applied (every keyword of every subschema on every
    value passes here, so an exponential or merely slow evaluation stops within one keyword's time)."""
    @functools.wraps(keyword)
    def apply(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
        check_deadline()
        return keyword(validator, value, instance, schema)

    return apply


def _search(regex: str, text: str) -> bool:
    current = CURRENT.get()
    compiled = current.patterns.get(regex) if current is not None else None
    if compiled is None:  # a pattern in a place only a $ref reaches: compiled now (RE2 keeps recent ones)
        compiled = compile_pattern(regex)
    return compiled.search(text) is not None


def pattern(validator: Any, patrn: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def pattern_properties(validator: Any, value: dict[str, Any], instance: Any,
                       schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for regex, subschema in value.items():
        for key, item in instance.items():
            if _search(regex, key):
                yield from validator.descend(item, subschema, path=key, schema_path=regex)


def _extras(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [key for key in instance
            if key not in properties and not any(_search(regex, key) for regex in patterns)]


def _extras_text(extras: list[Any]) -> tuple[str, str]:
    return ", ".join(repr(extra) for extra in extras), "was" if len(extras) == 1 else "were"


def additional_properties(validator: Any, value: Any, instance: Any,
                          schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = set(_extras(instance, schema))
    if validator.is_type(value, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], value, path=extra)
    elif not value and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            names, verb = _extras_text(sorted(extras, key=str))
            yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def unevaluated_properties(validator: Any, value: Any, instance: Any,
                           schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = set(_evaluated_keys(validator, instance, schema))
    unevaluated = [key for key in instance if key not in evaluated
                   and next(validator.descend(instance[key], value, path=key, schema_path=key), None) is not None]
    if not unevaluated:
        return
    if value is False:
        names, verb = _extras_text(sorted(unevaluated, key=str))
        yield ValidationError(f"Unevaluated properties are not allowed ({names} {verb} unexpected)")
    else:
        names, verb = _extras_text(unevaluated)
        yield ValidationError(f"Unevaluated properties are not valid under the given schema ({names} {verb} "
                              "unevaluated and invalid)")


def _is_valid(errors: Iterator[ValidationError]) -> bool:
    return next(errors, None) is None


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> list[str]:
    """Keys evaluated by ``schema`` and what it applies in place (jsonschema's rules, patterns on RE2)."""
    if validator.is_type(schema, "boolean"):
        return []
    keys: list[str] = []
    for ref_keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(ref_keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)  # as jsonschema does (tests/integration: library contracts)
            keys += _evaluated_keys(validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                                    instance, resolved.contents)
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys += properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        subschema = schema.get(keyword)
        if subschema is not None:
            keys += [key for key, item in instance.items() if _is_valid(validator.descend(item, subschema))]
    for regex in schema.get("patternProperties", {}):
        keys += [key for key in instance if _search(regex, key)]
    for name, subschema in schema.get("dependentSchemas", {}).items():
        if name in instance:
            keys += _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _is_valid(validator.descend(instance, subschema)):
                keys += _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys += _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys += _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys += _evaluated_keys(validator, instance, schema["else"])
    return keys


_TRUE, _FALSE = object(), object()  # true and false are not 1 and 0 here


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a JSON value: equal per JSON Schema (1 == 1.0, true != 1) iff equal here.
    Objects become frozensets and arrays tuples, which never equal each other or a scalar."""
    kind = type(value)
    if kind is dict:
        return frozenset([(key, _frozen(item)) for key, item in value.items()])
    if kind is list:
        return tuple([_frozen(item) for item in value])
    if kind is bool:
        return _TRUE if value else _FALSE
    return value


def unique_items(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not value or not validator.is_type(instance, "array"):
        return
    seen = set()
    for index, item in enumerate(instance):
        if index % 256 == 255:
            check_deadline()
        frozen = _frozen(item)
        if frozen in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(frozen)


KEYWORDS: dict[str, Keyword] = {
    "pattern": pattern,
    "patternProperties": pattern_properties,
    "additionalProperties": additional_properties,
    "unevaluatedProperties": unevaluated_properties,
    "uniqueItems": unique_items,
}
