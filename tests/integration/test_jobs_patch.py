"""PATCH /v1/jobs/{job} (§3.5): null semantics, no-op, masked secrets, versions, concurrency, effects."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from shared.db.models import Job, JobVersion, Run
from shared.messages.queue_state import ready_messages
from tests.factories import make_run
from tests.integration.jobs_support import SECRET, assert_error, create, opened


def _patch(client, auth, ref, body):
    return client.patch(f"/v1/jobs/{ref}", json=body, headers=auth)


def test_change_writes_a_version_with_full_snapshot(client, auth, session, settings):
    job = create(client, auth, "p", webhook_secret=SECRET)
    response = _patch(client, auth, "p", {"description": "new", "max_attempts": 7})
    assert response.status_code == 200
    updated = response.json
    assert updated["version"] == 2 and updated["version_id"] != job["version_id"]
    assert updated["description"] == "new" and updated["max_attempts"] == 7
    assert updated["updated_at"] > job["updated_at"] and updated["created_at"] == job["created_at"]
    version = session.get(JobVersion, updated["version_id"])
    assert version.version == 2 and version.config["description"] == "new"
    assert opened(settings, version.config["webhook_secret"]) == SECRET and version.config["max_attempts"] == 7
    assert client.get("/v1/jobs/p", headers=auth).json == updated


def test_noop_patch_writes_nothing(client, auth, session):
    job = create(client, auth, "noop", tags={"a": "b"}, webhook_secret=SECRET)
    for body in ({}, {"tags": {"a": "b"}}, {"name": job["name"], "max_concurrency": 0},
                 {"webhook_secret": "whsec_…XY9Q"}, {"id": "x", "version": 7, "updated_at": "never"},
                 {"project_id": "proj-a"}, job):
        response = _patch(client, auth, "noop", body)
        assert response.status_code == 200, (body, response.json)
        assert response.json == job
    assert session.scalar(sa.select(sa.func.count()).select_from(JobVersion)) == 1


def test_null_clears_and_restores_defaults(client, auth):
    create(client, auth, "nulls", description="d", cron="@daily", tags={"a": "b"}, timezone="Europe/Paris",
           retry_strategy="linear", max_attempts=9, timeout_secs=10, version_policy="latest",
           backwards_compatible=True, rate_limit_keys=[{"name": "k", "max": 1, "window_secs": 1}],
           default_run_metadata={"m": "n"}, retry_delays_secs=[3], max_concurrency=4, webhook_secret=SECRET)
    body = {f: None for f in ("description", "cron", "tags", "timezone", "retry_strategy", "max_attempts",
                              "timeout_secs", "version_policy", "backwards_compatible", "rate_limit_keys",
                              "default_run_metadata", "retry_delays_secs", "max_concurrency", "webhook_secret")}
    job = _patch(client, auth, "nulls", body).json
    assert job["description"] is None and job["cron"] is None and job["tags"] == {}
    assert job["timezone"] == "UTC" and job["retry_strategy"] == "exponential" and job["max_attempts"] == 3
    assert job["timeout_secs"] == 300 and job["version_policy"] == "pin" and job["backwards_compatible"] is False
    assert job["rate_limit_keys"] == [] and job["default_run_metadata"] == {} and job["retry_delays_secs"] == []
    assert job["max_concurrency"] is None and job["webhook_secret"] is None and job["version"] == 2


def test_null_for_required_fields_is_422(client, auth):
    create(client, auth, "req")
    for field in ("name", "slug", "endpoint_url", "enabled"):
        error = assert_error(_patch(client, auth, "req", {field: None}), 422)
        assert field in error["errors"]


def test_patch_validation_and_semantics_on_merged_config(client, auth):
    create(client, auth, "merged", retry_strategy="custom", retry_delays_secs=[1], rate_limit_max=5,
           rate_limit_window_secs=10)
    assert_error(_patch(client, auth, "merged", {"retry_delays_secs": []}), 400,
                 "retry_delays_secs: required when retry_strategy is custom")
    assert_error(_patch(client, auth, "merged", {"rate_limit_window_secs": 0}), 400,
                 "rate_limit_window_secs: required when rate_limit_max is set")
    assert_error(_patch(client, auth, "merged", {"timezone": "Europe/Pariss"}), 400,
                 'timezone: unknown time zone "Europe/Pariss"')
    assert _patch(client, auth, "merged", {"rate_limit_max": None, "rate_limit_window_secs": None}).status_code == 200
    assert_error(_patch(client, auth, "merged", {"max_attempts": "3"}), 422)
    assert_error(_patch(client, auth, "merged", {"slug": "batch"}), 422)


def test_masked_secret_rules(client, auth):
    create(client, auth, "sec", webhook_secret=SECRET)
    error = assert_error(_patch(client, auth, "sec", {"webhook_secret": "whsec_…zzzz"}), 422)
    assert error["errors"] == {"webhook_secret": ["looks like a masked value; send the full secret"]}
    assert_error(_patch(client, auth, "sec", {"webhook_secret": "tiny"}), 422)
    rotated = _patch(client, auth, "sec", {"webhook_secret": "another-secret-ABCD"}).json
    assert rotated["webhook_secret"] == "whsec_…ABCD" and rotated["version"] == 2
    cleared = _patch(client, auth, "sec", {"webhook_secret": ""}).json
    assert cleared["webhook_secret"] is None and cleared["version"] == 3
    assert_error(_patch(client, auth, "sec", {"webhook_secret": "whsec_…ABCD"}), 422)  # nothing to echo now


def test_slug_change_and_conflict(client, auth):
    create(client, auth, "one")
    create(client, auth, "two")
    assert_error(_patch(client, auth, "one", {"slug": "two"}), 409, 'slug "two" already exists in this project')
    renamed = _patch(client, auth, "one", {"slug": "uno"}).json
    assert renamed["slug"] == "uno"
    assert client.get("/v1/jobs/uno", headers=auth).status_code == 200
    assert_error(client.get("/v1/jobs/one", headers=auth), 404)


def test_project_and_lookup_errors(client, auth, other_auth):
    create(client, auth, "mine")
    assert_error(_patch(client, auth, "mine", {"project_id": "proj-b"}), 403)
    assert_error(_patch(client, auth, "missing", {"name": "x"}), 404, "job not found")
    assert_error(_patch(client, auth, "missing", {"project_id": "proj-b"}), 403)  # 403 precedes 404
    assert_error(_patch(client, other_auth, "mine", {"name": "x"}), 404)
    assert_error(client.patch("/v1/jobs/mine", data="null", content_type="application/json", headers=auth), 422)
    assert_error(client.patch("/v1/jobs/mine", json=[1], headers=auth), 422)


def test_schedule_changed_at_moves_only_for_schedule_fields(client, auth, session):
    job = create(client, auth, "sched")

    def changed_at():
        session.expire_all()
        return session.get(Job, job["id"]).schedule_changed_at

    start = changed_at()
    _patch(client, auth, "sched", {"description": "x"})
    assert changed_at() == start
    for body in ({"cron": "*/5 * * * *"}, {"timezone": "Asia/Tokyo"}, {"enabled": False}):
        before = changed_at()
        _patch(client, auth, "sched", body)
        assert changed_at() > before


def test_enabling_releases_held_runs(client, auth, session, app, redis_client):
    job = create(client, auth, "held", enabled=False)
    orm_job = session.get(Job, job["id"])
    held = make_run(session, orm_job, status="queued", held_at=orm_job.created_at)
    other = make_run(session, orm_job, status="delayed")
    session.commit()
    broker = app.extensions["sluice"].broker  # the app's own queue: nothing consumes it here
    before = ready_messages(broker)
    updated = _patch(client, auth, "held", {"enabled": True}).json
    assert updated["enabled"] is True and updated["version"] == 2
    session.expire_all()
    assert session.get(Run, held.id).held_at is None
    assert session.get(Run, other.id).status == "delayed"
    assert ready_messages(broker) == before + 1


def test_concurrent_patches_each_get_their_own_version(client, auth, app, session):
    create(client, auth, "race")
    errors = []

    def worker(i: int) -> None:
        with app.test_client() as c:
            response = c.patch("/v1/jobs/race", json={"description": f"d{i}", "tags": {f"t{i}": "x"}}, headers=auth)
            if response.status_code != 200:
                errors.append(response.json)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = client.get("/v1/jobs/race", headers=auth).json
    assert final["version"] == 13
    versions = session.scalars(sa.select(JobVersion.version).where(JobVersion.job_id == final["id"])).all()
    assert sorted(versions) == list(range(1, 14))
    descriptions = {v.config["description"] for v in session.scalars(
        sa.select(JobVersion).where(JobVersion.job_id == final["id"], JobVersion.version > 1))}
    assert descriptions == {f"d{i}" for i in range(12)}


def test_a_wrong_masked_secret_is_422_before_403_and_404(client, auth, other_auth):
    """The masked-secret check is a body check: it answers in schema order, before ``project_id`` and the
    lookup."""
    create(client, auth, "masked", webhook_secret=SECRET)
    wrong = {"webhook_secret": "whsec_…zzzz"}
    masked_error = {"webhook_secret": ["looks like a masked value; send the full secret"]}
    with_project = {**wrong, "project_id": "proj-b"}
    assert assert_error(_patch(client, auth, "masked", with_project), 422)["errors"] == masked_error
    assert assert_error(_patch(client, auth, "missing", wrong), 422)["errors"] == masked_error
    assert assert_error(_patch(client, other_auth, "masked", wrong), 422)["errors"] == masked_error
    echoed = {"webhook_secret": "whsec_…" + SECRET[-4:]}  # the current mask: "unchanged", then the usual order
    assert_error(_patch(client, auth, "masked", {**echoed, "project_id": "proj-b"}), 403)
    # another project's job is no job at all for this key: nothing to echo, as for an unknown job
    assert assert_error(_patch(client, other_auth, "masked", echoed), 422)["errors"] == masked_error
    assert_error(_patch(client, other_auth, "masked", {"name": "x"}), 404)
    assert _patch(client, auth, "masked", echoed).json["version"] == 1


def test_patch_checks_every_url_of_the_merged_job(app, client, auth):
    """An address that passed when it was written is checked again by any changing PATCH."""
    create(client, auth, "urls", endpoint_url="http://127.0.0.1/x", webhook_url="http://10.0.0.1/hook")
    settings = app.extensions["sluice"].settings
    app.extensions["sluice"].settings = settings.with_overrides(allow_private_endpoints=False)
    try:
        assert_error(_patch(client, auth, "urls", {"name": "renamed"}), 400,
                     "endpoint_url: host is a private address")
        assert_error(_patch(client, auth, "urls", {"endpoint_url": "http://93.184.216.34/"}), 400,
                     "webhook_url: host is a private address")
        fixed = _patch(client, auth, "urls", {"endpoint_url": "http://93.184.216.34/", "webhook_url": None})
        assert fixed.status_code == 200 and fixed.json["version"] == 2
    finally:
        app.extensions["sluice"].settings = settings
