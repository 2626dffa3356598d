"""shared.json_codec: orjson where it can, the standard library for what orjson refuses."""

from __future__ import annotations

import json

from shared import json_codec


def test_round_trip_keeps_order_and_unicode() -> None:
    value = {"b": 1, "a": [1.5, None, True], "é": "日本\u2028", "nested": {"z": {}, "y": []}}
    encoded = json_codec.dumps(value)
    assert json.loads(encoded) == value and list(json.loads(encoded)) == ["b", "a", "é", "nested"]


def test_values_orjson_refuses_fall_back_to_the_standard_library() -> None:
    huge = {"n": 10**30, 1: "int key"}
    assert json.loads(json_codec.dumps(huge)) == {"n": 10**30, "1": "int key"}
