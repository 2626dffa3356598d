"""Hostile input on every jobs route: random JSON values and junk bytes never produce a 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.jobs.config import W_FIELDS
from tests.integration.jobs_support import create

ROUTES = [
    ("POST", "/v1/jobs"), ("POST", "/v1/jobs/batch"), ("POST", "/v1/jobs/batch-enable"),
    ("POST", "/v1/jobs/batch-disable"), ("PATCH", "/v1/jobs/target"), ("POST", "/v1/jobs/target/clone"),
    ("POST", "/v1/jobs/target/dependencies"),
]
QUERY_ROUTES = ["/v1/jobs", "/v1/jobs/target/versions", "/v1/jobs/target/dependencies", "/v1/jobs/target/health"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
                    st.sampled_from(["", "0", "true", "@daily", "61 * * * *", "http://127.0.0.1:9/", "ftp://x",
                                     "Europe/Paris", "whsec_…abcd", "batch", "target", "custom", "x" * 3000]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
field_names = st.sampled_from([*W_FIELDS, "project_id", "ids", "job_ids", "jobs", "depends_on_job_id", "condition",
                               "window", "$ref"])
job_shaped = st.dictionaries(field_names, json_values, max_size=8)
bodies = st.one_of(json_values, job_shaped, st.lists(job_shaped, max_size=3),
                   st.fixed_dictionaries({"jobs": st.lists(job_shaped, max_size=3)}))
HYPO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def _check(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        body = response.json
        assert body["code"] == response.status_code and "request_id" in body
        assert ("errors" in body) == (response.status_code == 422)


@pytest.fixture()
def seeded(client, auth):
    create(client, auth, "target", webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    create(client, auth, "up")
    return auth


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_random_json_never_500(client, seeded, method, path):
    @HYPO
    @given(body=bodies)
    def run(body):
        _check(client.open(path, method=method, data=json.dumps(body), content_type="application/json",
                           headers=seeded))

    run()


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_junk_bytes_never_500(client, seeded, method, path):
    @HYPO
    @given(raw=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "text/plain", ""]))
    def run(raw, content_type):
        _check(client.open(path, method=method, data=raw, content_type=content_type or None, headers=seeded))

    run()


@pytest.mark.parametrize("path", QUERY_ROUTES)
def test_random_query_strings_never_500(client, seeded, path):
    keys = st.sampled_from(["limit", "cursor", "project_id", "slug", "tag_key", "tag_value", "enabled", "window"])

    @HYPO
    @given(params=st.lists(st.tuples(keys, st.text(max_size=30)), max_size=4))
    def run(params):
        _check(client.get(path, query_string=params, headers=seeded))

    run()


@pytest.mark.parametrize("ref", ["%00", "x" * 5000, "..", "%2e%2e", "ver_x", "01900000-0000-7000-8000-00000000000"])
def test_odd_path_values(client, seeded, ref):
    for path in (f"/v1/jobs/{ref}", f"/v1/jobs/target/versions/{ref}", f"/v1/jobs/{ref}/health"):
        _check(client.get(path, headers=seeded))
    _check(client.delete(f"/v1/jobs/target/dependencies/{ref}", headers=seeded))


@pytest.mark.parametrize("depth", [50, 101, 400, 700, 900, 990, 5000, 100000])
def test_deeply_nested_bodies(client, seeded, depth):
    nested = "[" * depth + "]" * depth
    for raw in (nested, '{"payload_schema": ' + "{\"a\": " * depth + "{}" + "}" * depth + "}"):
        for method, path in ROUTES:
            _check(client.open(path, method=method, data=raw, content_type="application/json", headers=seeded))
