"""The web console at /ui through Flask's test client: sign-in cookie, CSRF, scopes, project isolation, and
every page rendering real data. The browser tests (test_console_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from shared.apikeys import revoke_key
from shared.clock import utcnow
from shared.db.models import ApiKey, Run
from tests.conftest import make_key
from tests.factories import make_job, make_run

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(client, key: str):
    form = client.get("/ui/sign-in")
    token = CSRF.search(form.get_data(as_text=True)).group(1)
    return client.post("/ui/sign-in", data={"api_key": key, "csrf_token": token, "next": "/ui/runs"})


def csrf_of(client, path: str = "/ui/jobs") -> str:
    return CSRF.search(client.get(path).get_data(as_text=True)).group(1)


@pytest.fixture()
def key(session_factory) -> str:
    return make_key(session_factory)


@pytest.fixture()
def signed_in(client, key):
    assert sign_in(client, key).status_code == 303
    return client


def test_pages_need_a_signed_in_key(client):
    response = client.get("/ui/jobs")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/ui/sign-in?next=/ui/jobs")


def test_sign_in_sets_an_httponly_strict_cookie_and_goes_back(client, key):
    response = sign_in(client, key)
    assert response.status_code == 303 and response.headers["Location"] == "/ui/runs"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("sluice_console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and "proj-a" in page.get_data(as_text=True)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_sign_in_refuses_a_bad_key_and_a_forged_form(client, key):
    assert sign_in(client, "sk_" + "0" * 64).status_code == 401
    fresh = client.application.test_client()
    forged = fresh.post("/ui/sign-in", data={"api_key": key, "csrf_token": "x" * 43})
    assert forged.status_code == 403 and "sluice_console=" not in " ".join(forged.headers.getlist("Set-Cookie"))


def test_next_never_leaves_the_console(client, key):
    form = client.get("/ui/sign-in")
    token = CSRF.search(form.get_data(as_text=True)).group(1)
    response = client.post("/ui/sign-in", data={"api_key": key, "csrf_token": token, "next": "//evil.example/ui/"})
    assert response.headers["Location"] == "/ui/jobs"


def test_a_revoked_key_is_signed_out_at_its_next_click(signed_in, session_factory):
    with session_factory() as s:
        key_row = s.scalars(sa.select(ApiKey)).one()
        revoke_key(s, key_row.id, utcnow())
        s.commit()
    assert signed_in.get("/ui/jobs").status_code == 302


def test_actions_need_the_csrf_token(signed_in, session):
    job = make_job(session, slug="csrf-job")
    session.commit()
    refused = signed_in.post("/ui/jobs/csrf-job/disable", data={})
    assert refused.status_code == 403 and "CSRF" in refused.get_data(as_text=True)
    session.refresh(job)
    assert job.enabled
    done = signed_in.post("/ui/jobs/csrf-job/disable", data={"csrf_token": csrf_of(signed_in), "next": "/ui/jobs"})
    assert done.status_code == 303
    session.refresh(job)
    assert not job.enabled


def test_scopes_decide_what_is_shown_and_allowed(client, session, session_factory):
    job = make_job(session, slug="ro-job")
    run = make_run(session, job, status="failed", finished_at=utcnow())
    session.commit()
    assert sign_in(client, make_key(session_factory, scopes="jobs:read,runs:read")).status_code == 303
    jobs_page = client.get("/ui/jobs").get_data(as_text=True)
    assert "ro-job" in jobs_page and "Disable" not in jobs_page and "Trigger" not in jobs_page
    run_page = client.get(f"/ui/runs/{run.id}").get_data(as_text=True)
    assert 'disabled title="Needs the runs:write scope">Replay' in run_page
    refused = client.post(f"/ui/runs/{run.id}/replay", data={"csrf_token": csrf_of(client)})
    assert refused.status_code == 403 and "missing scope runs:write" in refused.get_data(as_text=True)
    assert client.get("/ui/jobs/ro-job/trigger").status_code == 403
    assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 1


def test_another_projects_job_and_run_are_not_found(signed_in, session):
    job = make_job(session, slug="theirs", project_id="proj-b")
    run = make_run(session, job)
    session.commit()
    assert signed_in.get("/ui/jobs/theirs").status_code == 404
    assert signed_in.get(f"/ui/runs/{run.id}").status_code == 404
    assert signed_in.post(f"/ui/runs/{run.id}/cancel", data={"csrf_token": csrf_of(signed_in)}).status_code == 404
    assert "theirs" not in signed_in.get("/ui/jobs").get_data(as_text=True)
    assert run.id not in signed_in.get("/ui/runs").get_data(as_text=True)


def test_every_page_renders(signed_in, session):
    job = make_job(session, slug="pages", cron="*/5 * * * *", max_concurrency=2, rate_limit_max=5,
                   rate_limit_window_secs=60, payload_schema={"type": "object", "required": ["n"]})
    failed = make_run(session, job, status="failed", finished_at=utcnow(), error="boom", attempt=1,
                      started_at=utcnow(), execution_trace={"queue_wait_ms": 5, "dequeue_ms": 1, "connect_ms": 2,
                                                           "ttfb_ms": 30, "transfer_ms": 1, "dispatch_ms": 34,
                                                           "total_ms": 40})
    session.commit()
    for path in ("/ui/jobs", "/ui/jobs?q=pag&enabled=true", "/ui/jobs/pages", "/ui/jobs/pages/trigger",
                 "/ui/runs", "/ui/runs?status=failed&triggered_by=manual&job_id=pages", f"/ui/runs/{failed.id}",
                 "/ui/dead-letters", "/ui/fleet", "/ui/new-job"):
        response = signed_in.get(path)
        assert response.status_code == 200, path
    run_page = signed_in.get(f"/ui/runs/{failed.id}").get_data(as_text=True)
    assert "time to first byte" in run_page and "boom" in run_page
    assert "pages" in signed_in.get("/ui/dead-letters").get_data(as_text=True) or failed.id[-12:] in \
        signed_in.get("/ui/dead-letters").get_data(as_text=True)
    bad = signed_in.get("/ui/runs?status=nope")
    assert bad.status_code == 422 and "Unknown or not allowed status" in bad.get_data(as_text=True)


def test_trigger_form_checks_the_payload_against_the_schema(signed_in, session):
    make_job(session, slug="typed", payload_schema={"type": "object", "required": ["n"],
                                                   "properties": {"n": {"type": "integer"}}})
    session.commit()
    token = csrf_of(signed_in)
    refused = signed_in.post("/ui/jobs/typed/trigger", data={"csrf_token": token, "payload": '{"n": "x"}',
                                                             "action": "trigger"})
    assert refused.status_code == 422 and "payload_schema" in refused.get_data(as_text=True)
    checked = signed_in.post("/ui/jobs/typed/trigger", data={"csrf_token": token, "payload": '{"n": 1}',
                                                             "action": "check"})
    assert checked.status_code == 200 and "The payload is valid" in checked.get_data(as_text=True)
    assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 0
    created = signed_in.post("/ui/jobs/typed/trigger", data={"csrf_token": token, "payload": '{"n": 1}',
                                                             "action": "trigger"})
    assert created.status_code == 303 and created.headers["Location"].startswith("/ui/runs/")
    assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 1
    deep = "[" * 980 + "]" * 980
    for payload in (deep, "[" * 129 + "]" * 129):  # refused under its name, as the API refuses it
        refused = signed_in.post("/ui/jobs/typed/trigger", data={"csrf_token": token, "payload": payload,
                                                                 "action": "trigger"})
        assert refused.status_code == 422 and "Nested deeper than 128 levels" in refused.get_data(as_text=True)
    assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 1
    # Text PostgreSQL cannot store is refused under the field's name, as the API refuses it: NUL typed into a
    # field, or a NUL or lone surrogate escape inside the JSON payload.
    for field, value, shown in (("idempotency_key", "a\x00b", "NUL"), ("payload", '{"n": 1, "s": "\\u0000"}', "NUL"),
                                ("payload", '{"n": 1, "s": "\\ud800"}', "unpaired surrogate")):
        refused = signed_in.post("/ui/jobs/typed/trigger", data={"csrf_token": token, "payload": '{"n": 1}',
                                                                 field: value, "action": "trigger"})
        assert refused.status_code == 422 and shown in refused.get_data(as_text=True)
    assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 1


def test_version_diff_shows_the_changed_fields(signed_in, client, auth):
    assert client.post("/v1/jobs", json={"name": "D", "slug": "diffed", "endpoint_url": "https://example.com/x"},
                       headers=auth).status_code == 201
    assert client.patch("/v1/jobs/diffed", json={"timeout_secs": 77}, headers=auth).status_code == 200
    versions = client.get("/v1/jobs/diffed/versions", headers=auth).get_json()
    page = signed_in.get(f"/ui/jobs/diffed?a={versions[1]['id']}&b={versions[0]['id']}").get_data(as_text=True)
    assert "1 field changed from v1 to v2" in page and "timeout_secs" in page and "77" in page


def test_dead_letters_replay_many_and_cancel_their_replays(signed_in, session):
    job = make_job(session, slug="dlq")
    dead = [make_run(session, job, status="failed", finished_at=utcnow()) for _ in range(2)]
    session.commit()
    token = csrf_of(signed_in)
    replayed = signed_in.post("/ui/dead-letters/replay", data={"csrf_token": token, "run_ids": [r.id for r in dead]})
    assert replayed.status_code == 200 and "Replay: 2 of 2 done" in replayed.get_data(as_text=True)
    canceled = signed_in.post("/ui/dead-letters/cancel", data={"csrf_token": token, "run_ids": [dead[0].id]})
    assert "Cancel replays: 1 of 1 done" in canceled.get_data(as_text=True)
    statuses = sorted(session.scalars(sa.select(Run.status).where(Run.continuation_of.is_not(None))))
    assert statuses == ["canceled", "queued"]


def test_new_job_form_creates_a_job_or_shows_the_apis_errors(signed_in, session):
    token = csrf_of(signed_in)
    bad = signed_in.post("/ui/new-job", data={"csrf_token": token, "name": "N", "slug": "Bad Slug",
                                              "endpoint_url": "https://example.com/n"})
    assert bad.status_code == 422 and "slug" in bad.get_data(as_text=True)
    good = signed_in.post("/ui/new-job", data={"csrf_token": token, "name": "N", "slug": "n",
                                               "endpoint_url": "https://example.com/n", "max_attempts": "2",
                                               "payload_schema": '{"type": "object"}'})
    assert good.status_code == 303 and good.headers["Location"] == "/ui/jobs/n"
    again = signed_in.post("/ui/new-job", data={"csrf_token": token, "name": "N", "slug": "n",
                                                "endpoint_url": "https://example.com/n"})
    assert again.status_code == 409 and "already exists" in again.get_data(as_text=True)


def test_fleet_shows_slots_in_use_and_the_rate_window_of_a_limited_job(signed_in, session, redis_client):
    from shared.limits.limiter import LimitRequest, Limits, rate_rules_for

    job = make_job(session, slug="limited", name="Limited", max_concurrency=3, rate_limit_max=10,
                   rate_limit_window_secs=60)
    session.commit()
    limits = Limits(redis_client)
    for n in range(2):
        decision = limits.acquire(LimitRequest(run_id=f"run-{n}", job_id=job.id, max_concurrency=3,
                                               concurrency_key=None, max_concurrency_per_key=None, lease_ms=60_000,
                                               rate_rules=rate_rules_for(job.id, 10, 60, [], {}, {}, {})))
        assert decision.admitted
    page = signed_in.get("/ui/fleet").get_data(as_text=True)
    row = page[page.index(">Limited<"):]
    assert re.search(r"<td>2\s*/ 3", row) and "2 / 10 starts per 60 s" in row


def test_job_search_matches_part_of_a_name_or_slug_literally(signed_in, session):
    make_job(session, slug="nightly-report", name="Nightly report")
    make_job(session, slug="hourly-sync", name="Sync 100% of rows")
    session.commit()
    found = signed_in.get("/ui/jobs?q=REPORT").get_data(as_text=True)
    assert "nightly-report" in found and "hourly-sync" not in found
    percent = signed_in.get("/ui/jobs?q=100%25").get_data(as_text=True)
    assert "hourly-sync" in percent and "nightly-report" not in percent
    underscore = signed_in.get("/ui/jobs?q=_").get_data(as_text=True)  # a literal "_", not any character
    assert "hourly-sync" not in underscore and "nightly-report" not in underscore


def test_the_jobs_page_health_is_the_apis_health_of_each_job(signed_in, client, auth, session):
    now = utcnow()
    jobs = [make_job(session, slug=f"h{n}", name=f"H{n}") for n in range(3)]
    for n, job in enumerate(jobs):
        for i in range(n * 3):
            make_run(session, job, status="completed" if i % 3 else "failed", started_at=now, finished_at=now)
    session.commit()
    page = signed_in.get("/ui/jobs").get_data(as_text=True)
    for job in jobs:
        score = client.get(f"/v1/jobs/{job.slug}/health", headers=auth).get_json()["health_score"]
        row = page[page.index(f">{job.name}<"):]
        shown = "no runs" if score == -1 else f">{score}<"
        assert shown in row[:row.index("</tr>")], (job.slug, score)
