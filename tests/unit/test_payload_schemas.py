"""Payload schemas in bounded time and memory: RE2 patterns, write-time bounds, the time budget, the cache."""

from __future__ import annotations

import json
import time

import pytest

from shared.errors import BadRequest
from shared.jobs.rules import check_payload_schema
from shared.payload_schemas.bounds import MAX_FAN_OUT, schema_problem
from shared.payload_schemas.evaluation import SchemaCache, evaluate
from shared.triggers.payloads import schema_errors

BACKTRACKING = "^(a+)+$"
EVIL = "a" * 50_000 + "!"


def _doubling(levels: int) -> dict:
    """Each level's anyOf names the next level twice: 2^levels subschemas from a few hundred bytes."""
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(levels)}
    defs[f"d{levels}"] = {"type": "string"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


def _timed(function, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - started


@pytest.mark.parametrize("schema", [
    {"pattern": BACKTRACKING},
    {"type": "object", "patternProperties": {BACKTRACKING: {"type": "integer"}}},
    {"type": "object", "patternProperties": {BACKTRACKING: {}}, "additionalProperties": False},
    {"type": "object", "patternProperties": {BACKTRACKING: {}}, "unevaluatedProperties": False},
    {"allOf": [{"patternProperties": {BACKTRACKING: {}}}], "unevaluatedProperties": False},
])
def test_backtracking_patterns_run_in_linear_time(schema):
    payload = EVIL if "pattern" in schema else {EVIL: "x", "aaa": "x"}
    messages, elapsed = _timed(schema_errors, schema, payload)
    assert elapsed < 1.0  # Python's re would not finish: 2^50000 ways to split the a's
    assert messages  # each schema refuses something in the payload
    assert all(len(message) <= 500 for message in messages)


def test_patterns_keep_their_meaning():
    schema = {"type": "object", "properties": {"id": {"pattern": "^[a-z]+-[0-9]{2}$"}},
              "patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": False}
    assert schema_errors(schema, {"id": "abc-12", "x-note": "n"}) == []
    assert schema_errors(schema, {"id": "abc-12\n"})  # $ is the very end, as in ECMA-262
    assert schema_errors(schema, {"id": "abc-1"}) == ["$.id: 'abc-1' does not match '^[a-z]+-[0-9]{2}$'"]
    assert schema_errors(schema, {"x-note": 1}) == ['$["x-note"]: 1 is not of type \'string\'']
    assert schema_errors(schema, {"other": 1}) == ["$: 'other' does not match any of the regexes: '^x-'"]
    assert schema_errors({"pattern": "é+"}, "café") == []


def test_unique_items_is_linear_and_keeps_json_equality():
    distinct = [{"a": i, "b": [i, True]} for i in range(10_000)]
    messages, elapsed = _timed(schema_errors, {"uniqueItems": True}, distinct)
    assert messages == [] and elapsed < 1.0
    assert schema_errors({"uniqueItems": True}, [{"a": 1}, {"a": 1.0}])  # 1 and 1.0 are equal
    assert schema_errors({"uniqueItems": True}, [[1, {"b": [2]}], [1, {"b": [2.0]}]])
    assert schema_errors({"uniqueItems": True}, [1, True, 0, False, None, "1", [1], {"1": 1}]) == []


def test_an_exponential_schema_stops_at_its_time_budget():
    schema = _doubling(40)
    (_, problem), elapsed = _timed(evaluate, schema, 5, max_errors=20, budget_secs=0.05)
    assert problem is not None and "took longer than 50 ms" in problem
    assert elapsed < 0.5


def test_schemas_are_bounded_when_written():
    assert schema_problem(_doubling(10)) is None  # 2^10 subschemas: fine
    problem = schema_problem(_doubling(20))
    assert problem is not None and str(MAX_FAN_OUT) in problem
    recursive = {"$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
                 "$ref": "#/$defs/node"}
    assert schema_problem(recursive) is None  # a recursive schema is bounded by the payload's depth
    assert "larger than 128 KiB" in (schema_problem({"enum": ["x" * 140_000]}) or "")
    with pytest.raises(BadRequest, match="payload_schema: pattern \"\\(\\?=a\\)\" is not supported"):
        check_payload_schema({"properties": {"a": {"pattern": "(?=a)"}}})
    with pytest.raises(BadRequest, match="patternProperties name"):
        check_payload_schema({"patternProperties": {"(a)\\1": {}}})
    with pytest.raises(BadRequest, match="longer than 1000 characters"):
        check_payload_schema({"pattern": "a" * 1001})
    with pytest.raises(BadRequest, match="fans out"):
        check_payload_schema(_doubling(30))
    check_payload_schema({"examples": [{"pattern": "(?=data, not a schema)"}], "enum": [{"pattern": "(?="}]})


def test_a_stored_pattern_re2_cannot_run_is_reported_not_run():
    # Written before patterns were checked: reported as the payload's 422, never run on a backtracking engine.
    messages = schema_errors({"pattern": "(?=a)a"}, "a")
    assert len(messages) == 1 and "cannot be evaluated" in messages[0] and "not supported" in messages[0]


def test_the_validator_cache_is_bounded_by_bytes():
    cache = SchemaCache(max_bytes=200_000)
    for i in range(100):
        schema = {"type": "object", "properties": {f"p{i}-{j}": {"type": "integer"} for j in range(40)}}
        assert evaluate(schema, {f"p{i}-0": "x"}, max_errors=20, cache=cache)[0]
    assert 0 < cache.held_bytes <= 200_000
    assert 0 < len(cache) < 100
    huge = {"enum": ["x" * 100_000]}
    assert evaluate(huge, "x", max_errors=20, cache=cache)[0]  # compiled for the call, not kept
    assert cache.held_bytes <= 200_000


def test_messages_quote_large_values_briefly():
    messages = schema_errors({"type": "object", "properties": {"a": {"maxLength": 1}}}, {"a": "x" * 100_000})
    assert len(messages) == 1 and len(messages[0]) <= 500 and messages[0].endswith("…")
    assert json.dumps(messages)  # still plain strings
