"""POST /v1/jobs (§3.2) and GET /v1/jobs/{job} (§3.1): success, defaults, normalisation, 422/400/403/409."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from shared.clock import parse_ts
from shared.db.models import JobVersion
from tests.integration.jobs_support import ENDPOINT, JOB_FIELDS, SECRET, assert_error, create, job_body


def test_create_minimal_applies_defaults(client, auth, session):
    response = client.post("/v1/jobs", json=job_body("nightly"), headers=auth)
    assert response.status_code == 201
    job = response.json
    assert set(job) == JOB_FIELDS
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["project_id"] == "proj-a" and job["slug"] == "nightly" and job["endpoint_url"] == ENDPOINT
    assert job["version"] == 1 and job["version_id"].startswith("ver_") and len(job["version_id"]) == 16
    assert job["max_attempts"] == 3 and job["timeout_secs"] == 300 and job["timezone"] == "UTC"
    assert job["retry_strategy"] == "exponential" and job["version_policy"] == "pin"
    assert job["enabled"] is True and job["backwards_compatible"] is False
    assert job["tags"] == {} and job["default_run_metadata"] == {} and job["rate_limit_keys"] == []
    assert job["retry_delays_secs"] == []
    for field in ("group_id", "description", "cron", "payload_schema", "fallback_endpoint_url", "max_concurrency",
                  "execution_window_cron", "rate_limit_max", "rate_limit_window_secs", "max_concurrency_per_key",
                  "dedup_window_secs", "webhook_url", "webhook_secret", "run_ttl_secs", "environment_id"):
        assert job[field] is None, field
    assert job["created_by"] == job["updated_by"] and job["created_by"].startswith("apikey:")
    assert job["created_at"] == job["updated_at"] and job["created_at"].endswith("Z")
    assert len(job["created_at"]) == len("2025-03-01T09:00:00.000000Z")
    parse_ts(job["created_at"])
    stored = session.scalars(sa.select(JobVersion).where(JobVersion.job_id == job["id"])).all()
    assert [(v.id, v.version) for v in stored] == [(job["version_id"], 1)]
    assert stored[0].config["slug"] == "nightly" and "webhook_secret" in stored[0].config


def test_create_full_configuration_round_trips(client, auth):
    fields = {
        "project_id": "proj-a", "group_id": "g1", "description": "d", "cron": "@hourly",
        "payload_schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        "tags": {"team": "core"}, "fallback_endpoint_url": "https://127.0.0.2/fb", "max_attempts": 5,
        "timeout_secs": 30, "max_concurrency": 2, "max_concurrency_per_key": 1,
        "execution_window_cron": "* 9-17 * * 1-5", "timezone": "Europe/Paris", "rate_limit_max": 10,
        "rate_limit_window_secs": 60, "rate_limit_keys": [{"name": "tenant", "max": 3, "window_secs": 10}],
        "default_run_metadata": {"k": "v"}, "dedup_window_secs": 120, "enabled": False,
        "webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": SECRET, "run_ttl_secs": 600,
        "retry_strategy": "custom", "retry_delays_secs": [1, 5, 30], "environment_id": "prod",
        "version_policy": "minor", "backwards_compatible": True,
        # read-only fields and unknown keys are ignored (§1.1)
        "id": "ignored", "version": 99, "created_by": "x", "unknown_field": 1,
    }
    job = create(client, auth, "full", **fields)
    for key, value in fields.items():
        if key in ("id", "version", "created_by", "unknown_field", "webhook_secret"):
            continue
        assert job[key] == value, key
    assert job["webhook_secret"] == "whsec_…XY9Q"
    assert job["version"] == 1 and job["id"] != "ignored"
    fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert fetched.status_code == 200 and fetched.json == job


def test_normalisation_empty_strings_zero_limits_and_nulls(client, auth):
    job = create(client, auth, "norm", group_id="", description="", cron="", execution_window_cron="",
                 environment_id="", fallback_endpoint_url="", webhook_url="", webhook_secret="",
                 max_concurrency=0, max_concurrency_per_key=0, rate_limit_max=0, rate_limit_window_secs=0,
                 dedup_window_secs=0, run_ttl_secs=0, timezone=None, retry_strategy=None, tags=None,
                 max_attempts=None, enabled=None, payload_schema=None)
    for field in ("group_id", "description", "cron", "execution_window_cron", "environment_id",
                  "fallback_endpoint_url", "webhook_url", "webhook_secret", "max_concurrency",
                  "max_concurrency_per_key", "rate_limit_max", "rate_limit_window_secs", "dedup_window_secs",
                  "run_ttl_secs", "payload_schema"):
        assert job[field] is None, field
    assert job["timezone"] == "UTC" and job["retry_strategy"] == "exponential" and job["tags"] == {}
    assert job["max_attempts"] == 3 and job["enabled"] is True


def test_get_by_id_and_slug_and_404(client, auth):
    job = create(client, auth, "by-slug")
    assert client.get("/v1/jobs/by-slug", headers=auth).json["id"] == job["id"]
    assert client.get(f"/v1/jobs/{job['id'].upper()}", headers=auth).json["id"] == job["id"]
    assert_error(client.get("/v1/jobs/nope", headers=auth), 404, "job not found")
    assert_error(client.get("/v1/jobs/01900000-0000-7000-8000-000000000000", headers=auth), 404)


def test_uuid_looking_slug_resolves_id_first(client, auth):
    first = create(client, auth, "first")
    second = create(client, auth, first["id"])  # a slug equal to another job's id
    assert client.get(f"/v1/jobs/{first['id']}", headers=auth).json["id"] == first["id"]
    assert second["slug"] == first["id"]


@pytest.mark.parametrize(("field", "value"), [
    ("name", ""), ("name", "   "), ("name", "x" * 256), ("name", 5), ("name", None),
    ("slug", "Upper"), ("slug", "-lead"), ("slug", "a" * 129), ("slug", "batch"), ("slug", "batch-enable"),
    ("slug", "batch-disable"), ("slug", ""), ("slug", "has space"),
    ("endpoint_url", "not a url"), ("endpoint_url", "/relative"), ("endpoint_url", ""),
    ("endpoint_url", "http://h/" + "a" * 2048), ("endpoint_url", 5),
    ("fallback_endpoint_url", "nohost"), ("webhook_url", "http://"),
    ("group_id", "g" * 129), ("environment_id", "e" * 129), ("description", "d" * 2001),
    ("cron", "* " * 70), ("execution_window_cron", "x" * 129),
    ("max_attempts", 0), ("max_attempts", 101), ("max_attempts", "5"), ("max_attempts", 5.0),
    ("max_attempts", True), ("timeout_secs", 0), ("timeout_secs", 86401),
    ("max_concurrency", -1), ("max_concurrency", 10001), ("max_concurrency_per_key", 10001),
    ("rate_limit_max", 100001), ("rate_limit_window_secs", 86401), ("dedup_window_secs", 2592001),
    ("run_ttl_secs", -1), ("run_ttl_secs", 2592001),
    ("enabled", "true"), ("enabled", 1), ("backwards_compatible", "false"),
    ("retry_strategy", "random"), ("version_policy", "newest"),
    ("retry_delays_secs", [0]), ("retry_delays_secs", [86401]), ("retry_delays_secs", [1] * 101),
    ("retry_delays_secs", "1,2"), ("retry_delays_secs", [1.5]),
    ("tags", {f"k{i}": "v" for i in range(21)}), ("tags", {"k": "v" * 257}), ("tags", {"": "v"}),
    ("tags", {"k" * 65: "v"}), ("tags", {"k": 1}), ("tags", ["a"]),
    ("default_run_metadata", {f"k{i}": "v" for i in range(51)}), ("default_run_metadata", {"k": "v" * 1025}),
    ("rate_limit_keys", [{"name": "a", "max": 1}]), ("rate_limit_keys", [{"name": "", "max": 1, "window_secs": 1}]),
    ("rate_limit_keys", [{"name": "a", "max": 0, "window_secs": 1}]),
    ("rate_limit_keys", [{"name": "a", "max": 1, "window_secs": 86401}]),
    ("rate_limit_keys", [{"name": f"n{i}", "max": 1, "window_secs": 1} for i in range(11)]),
    ("payload_schema", "not-an-object"), ("payload_schema", True), ("payload_schema", []),
    ("webhook_secret", "short"), ("webhook_secret", "x" * 1025), ("webhook_secret", "whsec_!!!notbase64!!!"),
    ("webhook_secret", "whsec_c2hvcnQ="), ("webhook_secret", "whsec_…abcd"), ("timezone", 5),
    ("project_id", 5),
])
def test_create_field_validation_is_422(client, auth, field, value):
    body = job_body("valid-slug")
    body[field] = value
    error = assert_error(client.post("/v1/jobs", json=body, headers=auth), 422, "Validation failed")
    assert field in error["errors"], error


def test_create_missing_required_fields(client, auth):
    error = assert_error(client.post("/v1/jobs", json={}, headers=auth), 422)
    assert set(error["errors"]) == {"name", "slug", "endpoint_url"}


def test_create_masked_secret_message(client, auth):
    body = job_body("masked", webhook_secret="whsec_…abcd")
    error = assert_error(client.post("/v1/jobs", json=body, headers=auth), 422)
    assert error["errors"] == {"webhook_secret": ["looks like a masked value; send the full secret"]}


def test_whsec_secret_accepted(client, auth):
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert create(client, auth, "whsec", webhook_secret=secret)["webhook_secret"] == "whsec_…LaSw"


@pytest.mark.parametrize(("fields", "message"), [
    ({"cron": "61 * * * *"}, 'cron: invalid expression "61 * * * *"'),
    ({"cron": "0 0 30 2 *"}, "cron: expression never matches"),
    ({"execution_window_cron": "0 0 30 2 *"}, "execution_window_cron: expression never matches"),
    ({"execution_window_cron": "@reboot"}, 'execution_window_cron: invalid expression "@reboot"'),
    ({"timezone": "Europe/Pariss"}, 'timezone: unknown time zone "Europe/Pariss"'),
    ({"timezone": "utc"}, 'timezone: unknown time zone "utc"'),
    ({"timezone": "T" * 300}, f'timezone: unknown time zone "{"T" * 300}"'),
    ({"payload_schema": {"$ref": "https://example.com/s.json"}}, "payload_schema: remote $ref is not allowed"),
    ({"payload_schema": {"properties": {"a": {"$ref": "other.json#/x"}}}},
     "payload_schema: remote $ref is not allowed"),
    ({"retry_strategy": "custom"}, "retry_delays_secs: required when retry_strategy is custom"),
    ({"rate_limit_max": 5}, "rate_limit_window_secs: required when rate_limit_max is set"),
    ({"rate_limit_window_secs": 5}, "rate_limit_max: required when rate_limit_window_secs is set"),
    ({"endpoint_url": "ftp://127.0.0.1/x"}, "endpoint_url: must use http or https"),
    ({"webhook_url": "gopher://127.0.0.1/x"}, "webhook_url: must use http or https"),
])
def test_create_semantic_rules_are_400(client, auth, fields, message):
    assert_error(client.post("/v1/jobs", json=job_body("sem", **fields), headers=auth), 400, message)


def test_invalid_payload_schema_is_400(client, auth):
    response = client.post("/v1/jobs", json=job_body("bad-schema", payload_schema={"type": 5}), headers=auth)
    assert assert_error(response, 400)["message"].startswith("payload_schema: not a valid JSON Schema 2020-12")


@pytest.mark.parametrize("schema", ['{"type": "number", "maximum": NaN}', '{"type": "number", "minimum": -Infinity}',
                                    '{"type": "number", "maximum": 1e400}', '{"const": [NaN]}'])
def test_a_payload_schema_with_a_non_finite_number_is_400(client, auth, schema):
    create(client, auth, "target")
    message = "payload_schema: numbers must be finite (NaN and Infinity are not JSON)"
    body = json.dumps(job_body("nan")).replace('"name"', f'"payload_schema": {schema}, "name"', 1)
    assert_error(client.post("/v1/jobs", data=body, headers={**auth, "Content-Type": "application/json"}), 400, message)
    patch = '{"payload_schema": ' + schema + "}"
    assert_error(client.patch("/v1/jobs/target", data=patch, headers={**auth, "Content-Type": "application/json"}),
                 400, message)


def test_address_policy_applies_when_private_endpoints_are_refused(app, client, auth):
    settings = app.extensions["sluice"].settings
    app.extensions["sluice"].settings = settings.with_overrides(allow_private_endpoints=False)
    try:
        assert_error(client.post("/v1/jobs", json=job_body("p1", endpoint_url="http://127.0.0.1/x"), headers=auth),
                     400, "endpoint_url: host is a private address")
        assert_error(client.post("/v1/jobs", json=job_body("p2", endpoint_url="http://localhost/x"), headers=auth),
                     400, "endpoint_url: host is localhost")
        assert_error(client.post("/v1/jobs", json=job_body("p3", endpoint_url="http://93.184.216.34/",
                                                           fallback_endpoint_url="http://10.0.0.1/"), headers=auth),
                     400, "fallback_endpoint_url: host is a private address")
    finally:
        app.extensions["sluice"].settings = settings


def test_duplicate_slug_is_409_and_other_project_may_reuse_it(client, auth, other_auth):
    create(client, auth, "dup")
    assert_error(client.post("/v1/jobs", json=job_body("dup"), headers=auth), 409,
                 'slug "dup" already exists in this project')
    assert client.post("/v1/jobs", json=job_body("dup"), headers=other_auth).status_code == 201


def test_project_id_mismatch_is_403_after_schema_and_before_semantics(client, auth):
    assert_error(client.post("/v1/jobs", json=job_body("p", project_id="proj-b"), headers=auth), 403)
    # schema 422 wins over the project check, and the project check over semantic 400
    assert assert_error(client.post("/v1/jobs", json=job_body("p", project_id="proj-b", max_attempts=0),
                                    headers=auth), 422)
    assert_error(client.post("/v1/jobs", json=job_body("p", project_id="proj-b", cron="bad"), headers=auth), 403)


def test_semantic_400_before_conflict_409(client, auth):
    create(client, auth, "taken")
    assert_error(client.post("/v1/jobs", json=job_body("taken", cron="bad"), headers=auth), 400)


def test_cloud_metadata_is_refused_even_with_private_endpoints_allowed(app, client, auth):
    assert app.extensions["sluice"].settings.allow_private_endpoints  # the fixtures' switch is on
    assert_error(client.post("/v1/jobs", json=job_body("m1", endpoint_url="http://169.254.169.254/latest/"),
                             headers=auth), 400, "endpoint_url: host is a cloud metadata endpoint")
    assert_error(client.post("/v1/jobs", json=job_body("m2", webhook_url="http://metadata.google.internal/x"),
                             headers=auth), 400, "webhook_url: host is a cloud metadata endpoint")
    assert_error(client.post("/v1/jobs", json=job_body("m3", fallback_endpoint_url="http://[fd00:ec2::254]/"),
                             headers=auth), 400, "fallback_endpoint_url: host is a cloud metadata endpoint")


def test_allowlist_opens_named_private_destinations_only(app, client, auth):
    settings = app.extensions["sluice"].settings
    app.extensions["sluice"].settings = settings.with_overrides(
        allow_private_endpoints=False, allowed_private_endpoints=("10.0.0.0/8", "169.254.169.254"))
    try:
        assert client.post("/v1/jobs", json=job_body("a1", endpoint_url="http://10.1.2.3:8080/x"),
                           headers=auth).status_code == 201
        assert client.post("/v1/jobs", json=job_body("a2", endpoint_url="http://169.254.169.254/x"),
                           headers=auth).status_code == 201
        assert_error(client.post("/v1/jobs", json=job_body("a3", endpoint_url="http://192.168.1.1/x"), headers=auth),
                     400, "endpoint_url: host is a private address")
        assert_error(client.post("/v1/jobs", json=job_body("a4", endpoint_url="http://100.100.100.200/x"),
                                 headers=auth), 400, "endpoint_url: host is a cloud metadata endpoint")
    finally:
        app.extensions["sluice"].settings = settings
