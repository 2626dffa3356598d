"""shared.json_codec: orjson where it can, the standard library for what orjson refuses."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import json_codec


def test_round_trip_keeps_order_and_unicode() -> None:
    value = {"b": 1, "a": [1.5, None, True], "é": "日本\u2028", "nested": {"z": {}, "y": []}}
    encoded = json_codec.dumps(value)
    assert json.loads(encoded) == value and list(json.loads(encoded)) == ["b", "a", "é", "nested"]


def test_values_orjson_refuses_fall_back_to_the_standard_library() -> None:
    huge = {"n": 10**30, 1: "int key"}
    assert json.loads(json_codec.dumps(huge)) == {"n": 10**30, "1": "int key"}


def test_json_columns_decode_exactly_as_the_standard_library() -> None:
    from shared.db.engine import loads_json

    texts = ['{"a": 1, "b": [1.5, -0.0, 1e300, 2.2250738585072014e-308]}', '{"team": "t1"}', "[]", "{}",
             '{"n": 123456789012345678901234567890}', '{"n": 9223372036854775807}', '{"x": 0.1234567890123456789}',
             '"\\u00e9\\ud83d\\ude00"', "null", "true", '{"nested": {"deep": [[[]]], "s": "\\u2028"}}',
             '{"b": 1, "a": 2}']
    for text in texts:
        got = loads_json(text)
        assert got == json.loads(text) and type(got) is type(json.loads(text)), text
        assert json.dumps(got) == json.dumps(json.loads(text)), text  # same key order, same float text
    assert loads_json("{}") is not loads_json("{}")  # a fresh object each time


def test_datetimes_are_written_as_isoformat_on_both_paths() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 11, 29, 1, 2, 3, 456789, tzinfo=UTC)
    assert json_codec.dumps({"t": moment}) == b'{"t":"2026-11-29T01:02:03.456789+00:00"}'
    assert json.loads(json_codec.dumps({"t": moment, "n": 10**30})) == {"t": moment.isoformat(), "n": 10**30}


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def test_nesting_is_read_from_the_text_without_parsing_it() -> None:
    from shared.json_codec import MAX_DEPTH, nests_deeper

    assert not nests_deeper("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert nests_deeper("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert nests_deeper('{"a": ' * 100_000 + "1" + "}" * 100_000)  # far beyond the interpreter's stack
    assert not nests_deeper("[" + "[], {}, " * 1000 + "[]]")  # many brackets, two levels
    assert not nests_deeper('["' + "[{" * 500 + '"]')  # brackets inside a string are text
    assert not nests_deeper('["\\"' + "[" * 500 + '\\\\", "\\\\"]')  # escaped quotes and backslashes
    assert nests_deeper('["\\\\"' + ", [" * 200 + "]" * 201)  # a string ending in a backslash ends


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\'), inner,
                                                                                   max_size=3),
                    max_leaves=60))
def test_nesting_read_from_the_text_matches_the_parsed_value(value: object) -> None:
    from shared.json_codec import nests_deeper

    text = json.dumps(value)
    for limit in range(0, 12):
        assert nests_deeper(text, limit) == (_depth(value) > limit), (text, limit)
