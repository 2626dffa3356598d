"""Hostile input on every trigger and runs route: random JSON, headers and query values never give a 500."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import make_job, make_run

TRIGGER_FIELDS = ["payload", "idempotency_key", "priority", "scheduled_at", "delay_secs", "metadata", "tags",
                  "concurrency_key", "ttl_secs", "max_attempts_override", "timeout_secs_override", "debug_mode",
                  "dry_run", "items", "run_ids", "dependency_key"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
                    st.sampled_from(["", "cron:x", "2030-01-01T00:00:00Z", "2030-01-01T00:00:00",
                                     "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "x" * 2000, "\u2026",
                                     "queued", "dlq"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
trigger_shaped = st.dictionaries(st.sampled_from(TRIGGER_FIELDS), json_values, max_size=6)
bodies = st.one_of(json_values, trigger_shaped,
                   st.fixed_dictionaries({"items": st.lists(trigger_shaped, max_size=4)}),
                   st.fixed_dictionaries({"run_ids": st.lists(json_values, max_size=4)}))
HYPO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
BODY_ROUTES = ["/v1/jobs/target/trigger", "/v1/jobs/target/trigger/bulk", "/v1/runs/bulk-cancel",
               "/v1/runs/bulk-replay", "/v1/runs/{run}/cancel", "/v1/runs/{run}/replay"]
QUERY_ROUTES = ["/v1/runs", "/v1/runs/dlq", "/v1/jobs/target/runs", "/v1/runs/{run}/events"]
QUERY_KEYS = ["status", "triggered_by", "batch_id", "tag_key", "tag_value", "created_after", "created_before",
              "project_id", "limit", "cursor", "job_id"]


def _check(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        body = response.json
        assert body["code"] == response.status_code and "request_id" in body
        assert ("errors" in body) == (response.status_code == 422)


@pytest.fixture()
def seeded(session, auth):
    job = make_job(session, slug="target", payload_schema={"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 0}}}, dedup_window_secs=60)
    run = make_run(session, job, status="completed")
    session.commit()
    return run.id


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_random_json_bodies(client, auth, seeded, path):
    url = path.format(run=seeded)

    @HYPO
    @given(body=bodies, key=st.one_of(st.none(), st.text(max_size=300)))
    def run(body, key):
        headers = dict(auth)
        if key is not None and all(32 <= ord(c) < 127 for c in key):
            headers["Idempotency-Key"] = key
        _check(client.post(url, data=json.dumps(body), content_type="application/json", headers=headers))

    run()


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_junk_bytes(client, auth, seeded, path):
    url = path.format(run=seeded)

    @HYPO
    @given(raw=st.binary(max_size=200))
    def run(raw):
        _check(client.post(url, data=raw, content_type="application/json", headers=auth))

    run()


@pytest.mark.parametrize("path", QUERY_ROUTES)
def test_random_query_strings(client, auth, seeded, path):
    url = path.format(run=seeded)

    @HYPO
    @given(params=st.dictionaries(st.sampled_from(QUERY_KEYS), st.one_of(
        st.text(max_size=40), st.sampled_from(["failed,crashed", "-1", "0", "201", "99999999999999999999",
                                               "2024-01-01T00:00:00Z", "cron", "target", "\x00"])), max_size=5))
    def run(params):
        query = "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
        _check(client.get(f"{url}?{query}", headers=auth))

    run()


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_random_run_ids(client, auth, seeded, method):
    @HYPO
    @given(run_id=st.text(min_size=1, max_size=60))
    def run(run_id):
        _check(client.open(f"/v1/runs/{quote(run_id, safe='')}", method=method, headers=auth))

    run()
