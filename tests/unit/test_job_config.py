"""Pure job-configuration logic: normalisation, merge, change detection, semantic rules, health maths."""

from __future__ import annotations

import pytest

from shared.dependencies.edges import _reaches
from shared.egress.addresses import AddressPolicy
from shared.errors import BadRequest
from shared.jobs.config import (
    DEFAULTS,
    W_FIELDS,
    changed_fields,
    config_for_create,
    merge,
    normalise_fields,
    normalise_value,
)
from shared.jobs.health import health_score, parse_window
from shared.jobs.rules import check_config, check_payload_schema


def _config(**fields):
    return config_for_create({"name": "n", "slug": "s", "endpoint_url": "http://127.0.0.1/", **fields})


@pytest.mark.parametrize("field", ["group_id", "description", "cron", "execution_window_cron", "environment_id",
                                   "fallback_endpoint_url", "webhook_url", "webhook_secret"])
def test_empty_optional_string_is_null(field):
    assert normalise_value(field, "") is None


def test_empty_string_stays_for_other_fields():
    assert normalise_value("name", "") == ""


@pytest.mark.parametrize("field", ["max_concurrency", "max_concurrency_per_key", "rate_limit_max",
                                   "rate_limit_window_secs", "dedup_window_secs", "run_ttl_secs"])
def test_zero_limit_is_null(field):
    assert normalise_value(field, 0) is None
    assert normalise_value(field, 5) == 5


def test_null_restores_defaults():
    assert normalise_value("timezone", None) == "UTC"
    assert normalise_value("retry_strategy", None) == "exponential"
    assert normalise_value("max_attempts", None) == 3
    assert normalise_value("tags", None) == {}
    assert normalise_value("backwards_compatible", None) is False
    assert normalise_value("enabled", None) is True


def test_defaults_are_never_shared():
    first = normalise_value("tags", None)
    first["x"] = "y"
    assert DEFAULTS["tags"] == {} and normalise_value("tags", None) == {}


def test_create_fills_every_field_and_drops_unknown_keys():
    config = _config(unknown=1, id="x", version=5)
    assert list(config) == list(W_FIELDS)
    assert config["timezone"] == "UTC" and config["name"] == "n"
    assert normalise_fields({"unknown": 1, "cron": ""}) == {"cron": None}


def test_merge_and_changed_fields():
    stored = _config(tags={"a": "b"}, max_concurrency=2)
    assert changed_fields(stored, merge(stored, {})) == []
    assert changed_fields(stored, merge(stored, {"tags": {"a": "b"}, "max_concurrency": 2})) == []
    merged = merge(stored, {"max_concurrency": 0, "tags": {"a": "c"}, "description": ""})
    assert changed_fields(stored, merged) == ["tags", "max_concurrency"]
    assert merged["max_concurrency"] is None


def test_change_detection_is_structural_and_type_aware():
    stored = _config(payload_schema={"type": "object", "required": ["a"]})
    same = merge(stored, {"payload_schema": {"required": ["a"], "type": "object"}})
    assert changed_fields(stored, same) == []
    reordered = merge(stored, {"payload_schema": {"type": "object", "required": ["a"], "x": 1}})
    assert changed_fields(stored, reordered) == ["payload_schema"]
    with_bool = merge(_config(payload_schema={"const": 1}), {"payload_schema": {"const": True}})
    assert changed_fields(_config(payload_schema={"const": 1}), with_bool) == ["payload_schema"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"cron": "61 * * * *"}, 'cron: invalid expression "61 * * * *"'),
    ({"execution_window_cron": "0 0 31 2 *"}, "execution_window_cron: expression never matches"),
    ({"timezone": "Europe/Pariss"}, 'timezone: unknown time zone "Europe/Pariss"'),
    ({"payload_schema": {"$ref": "http://x/y"}}, "payload_schema: remote $ref is not allowed"),
    ({"payload_schema": {"$defs": {"a": {"$dynamicRef": "x.json"}}}}, "payload_schema: remote $ref is not allowed"),
    ({"retry_strategy": "custom"}, "retry_delays_secs: required when retry_strategy is custom"),
    ({"rate_limit_max": 3}, "rate_limit_window_secs: required when rate_limit_max is set"),
    ({"rate_limit_window_secs": 3}, "rate_limit_max: required when rate_limit_window_secs is set"),
    ({"webhook_url": "ftp://x/"}, "webhook_url: must use http or https"),
])
def test_semantic_rules(fields, message):
    with pytest.raises(BadRequest) as err:
        check_config(_config(**fields), policy=AddressPolicy(allow_private=True))
    assert err.value.message == message


def test_rule_order_follows_the_contract_table():
    with pytest.raises(BadRequest) as err:
        check_config(_config(cron="bad", timezone="Nope/Zone"), policy=AddressPolicy(allow_private=True))
    assert err.value.message.startswith("cron:")


def test_valid_configuration_passes():
    check_config(_config(cron="@daily", execution_window_cron="* 9-17 * * 1-5", timezone="America/New_York",
                         payload_schema={"$defs": {"a": {}}, "properties": {"x": {"$ref": "#/$defs/a"}}},
                         retry_strategy="custom", retry_delays_secs=[1], rate_limit_max=1,
                         rate_limit_window_secs=1), policy=AddressPolicy(allow_private=True))


def test_payload_schema_errors():
    with pytest.raises(BadRequest) as err:
        check_payload_schema({"type": "nonsense"})
    assert err.value.message.startswith("payload_schema: not a valid JSON Schema 2020-12")
    check_payload_schema({"properties": {"$ref": {"type": "string"}}})  # a property named $ref is fine


@pytest.mark.parametrize("field", ["endpoint_url", "fallback_endpoint_url", "webhook_url"])
def test_every_url_of_the_configuration_is_checked(field):
    with pytest.raises(BadRequest, match=f"{field}: must use http or https"):
        check_config(_config(**{field: "ftp://x/"}), policy=AddressPolicy(allow_private=True))


def test_health_score_formula():
    assert health_score(0, 0, 0, 0) == -1
    assert health_score(10, 100, 1, 2) == 100
    assert health_score(10, 50, 1, 2) == pytest.approx(65)
    assert health_score(10, 50, 1, 8) == pytest.approx(35 + 30 * 2 / 8)
    assert health_score(10, 0, 0, 0) == 30


def test_parse_window():
    assert parse_window(None) == "7d"
    assert parse_window("30d") == "30d"
    with pytest.raises(BadRequest) as err:
        parse_window("2h")
    assert err.value.message == "window: must be one of 1h, 1d, 7d, 30d"


def test_cycle_reachability():
    edges = [("a", "b"), ("b", "c")]
    assert _reaches(edges, "a", "c") and not _reaches(edges, "c", "a") and _reaches(edges, "x", "x")
