"""Checking a payload against its job's schema, in bounded time and memory.

The validator is JSON Schema 2020-12 (jsonschema's) with ``keywords.KEYWORDS`` in place of jsonschema's
own, every keyword checking the deadline (``keywords.budgeted``), and no format assertions. Compiled
schemas (the validator and the schema's RE2 patterns) are kept by canonical schema text in an LRU bounded
by an estimate of the bytes they hold.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

from shared.payload_schemas.bounds import schema_patterns
from shared.payload_schemas.keywords import CURRENT, KEYWORDS, BudgetExceeded, Evaluation, budgeted
from shared.payload_schemas.patterns import PatternError, compile_pattern, pattern_cost

BUDGET_SECS = 1.0  # per payload: ample for a 1 MiB payload against a real schema
MAX_CACHE_BYTES = 32 * 1024 * 1024
_BYTES_PER_SCHEMA_CHAR = 12  # parsed schema objects and jsonschema's resources, per character of its text


@functools.cache
def _validator_class() -> Any:
    keywords = {**Draft202012Validator.VALIDATORS, **KEYWORDS}
    return validators.extend(Draft202012Validator, {name: budgeted(fn) for name, fn in keywords.items()})


@dataclass(frozen=True)
class CompiledSchema:
    validator: Any
    patterns: dict[str, Any]
    cost_bytes: int


def compile_schema(schema_text: str) -> CompiledSchema:
    schema = json.loads(schema_text)
    patterns: dict[str, Any] = {}
    for _, regex in schema_patterns(schema):
        if regex not in patterns:
            with contextlib.suppress(PatternError):  # refused where it is searched, with the reason
                patterns[regex] = compile_pattern(regex)
    # An empty registry: nothing is ever fetched (remote $refs are refused when the job is written).
    validator = _validator_class()(schema, registry=Registry())
    cost = len(schema_text) * _BYTES_PER_SCHEMA_CHAR + sum(pattern_cost(c) for c in patterns.values())
    return CompiledSchema(validator, patterns, cost)


class SchemaCache:
    """Compiled schemas by canonical text, least recently used first out, at most ``max_bytes`` (estimated).
    A schema larger than the whole budget is compiled for each use and not kept."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CompiledSchema] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, schema_text: str) -> CompiledSchema:
        with self._lock:
            found = self._entries.get(schema_text)
            if found is not None:
                self._entries.move_to_end(schema_text)
                return found
        compiled = compile_schema(schema_text)  # outside the lock: two threads may both compile (harmless)
        with self._lock:
            if schema_text not in self._entries and compiled.cost_bytes <= self.max_bytes:
                self._entries[schema_text] = compiled
                self._bytes += compiled.cost_bytes
                while self._bytes > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= dropped.cost_bytes
        return compiled

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


_CACHE = SchemaCache()


def evaluate(schema: dict[str, Any], payload: Any, *, max_errors: int, budget_secs: float = BUDGET_SECS,
             cache: SchemaCache = _CACHE) -> tuple[list[ValidationError], str | None]:
    """(up to ``max_errors`` errors, ``None``) or, when the schema cannot be evaluated on this payload, (the
    errors found so far, why): over its time budget, an unsupported pattern, an unresolvable reference, or
    nesting deeper than the interpreter allows."""
    compiled = cache.get(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    errors: list[ValidationError] = []
    token = CURRENT.set(Evaluation(time.monotonic() + budget_secs, compiled.patterns))
    try:
        for error in compiled.validator.iter_errors(payload):
            errors.append(error)
            if len(errors) >= max_errors:
                break
    except BudgetExceeded:
        return errors, (f"payload_schema took longer than {round(budget_secs * 1000)} ms to check this payload "
                        "(simplify the schema or the payload)")
    except PatternError as exc:
        return errors, f"payload_schema has a pattern that cannot be evaluated: {exc}"
    except Unresolvable as exc:
        return errors, f"payload_schema cannot be evaluated ({type(exc).__name__})"
    except RecursionError:
        return errors, "payload is nested too deeply to validate"
    finally:
        CURRENT.reset(token)
    return errors, None
