"""``GET /metrics`` and the request log, over the real app, PostgreSQL and Redis.

Counters live in the process-wide registry and other tests move them too, so assertions compare values
before and after the action under test.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared.clock import utcnow
from shared.db.models import Job, Run
from shared.limits.limiter import LimitRequest, Limits
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.moves import move
from shared.runs.status import RunStatus
from tests import factories
from tests.integration.jobs_support import create

REPO = Path(__file__).resolve().parents[2]
EVENT_FAMILIES = {
    "sluice_http_requests": "counter",
    "sluice_http_request_duration_seconds": "histogram",
    "sluice_runs_created": "counter",
    "sluice_runs_finished": "counter",
    "sluice_attempt_duration_seconds": "histogram",
    "sluice_run_redelays": "counter",
    "sluice_webhook_deliveries": "counter",
}
GAUGE_FAMILIES = {"sluice_queue_depth", "sluice_oldest_ready_run_age_seconds", "sluice_job_slots_in_use",
                  "sluice_runs_active", "sluice_oldest_overdue_delayed_run_seconds"}


@pytest.fixture()
def settings(settings):  # type: ignore[no-untyped-def]
    """These tests change what the gauges report between scrapes: sample them on every scrape."""
    return settings.with_overrides(metrics_gauge_secs=0)


def scrape(client) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:  # type: ignore[no-untyped-def]
    """family name -> {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families


def value(families, sample: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """The sum of ``sample`` over every label set that includes ``labels`` (e.g. every method)."""
    owners = sorted((name for name in families if sample.startswith(name)), key=len)
    family = families[owners[-1]] if owners else {}
    return float(sum(number for (name, sample_labels), number in family.items()
                     if name == sample and all((k, v) in sample_labels for k, v in labels.items())))


def test_metrics_needs_no_key_and_exposes_every_family(client, auth):  # type: ignore[no-untyped-def]
    client.get("/v1/jobs", headers=auth)
    families = scrape(client)
    for name in set(EVENT_FAMILIES) | GAUGE_FAMILIES:
        assert name in families, f"{name} missing from /metrics"


def test_requests_are_counted_by_url_rule_and_status(client, auth):  # type: ignore[no-untyped-def]
    job = create(client, auth, slug="metrics-route")
    before = scrape(client)
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200
    assert client.get("/v1/jobs/metrics-route", headers=auth).status_code == 200
    assert client.get("/v1/jobs/no-such-job", headers=auth).status_code == 404
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/definitely/not/a/route").status_code == 404
    after = scrape(client)

    rule = "/v1/jobs/<jobref:job>"
    total = "sluice_http_requests_total"
    assert value(after, total, route=rule, status="200") - value(before, total, route=rule, status="200") == 2
    assert value(after, total, route=rule, status="404") - value(before, total, route=rule, status="404") == 1
    assert value(after, total, route="/v1/jobs", status="401") - value(before, total, route="/v1/jobs",
                                                                         status="401") == 1
    assert value(after, total, route="<unmatched>", status="404") - value(before, total, route="<unmatched>",
                                                                         status="404") == 1
    # No raw path ever becomes a label value.
    labels = {dict(k[1]).get("route") for k in after["sluice_http_requests"]}
    assert job["id"] not in " ".join(str(x) for x in labels) and "/definitely/not/a/route" not in labels
    count = "sluice_http_request_duration_seconds_count"
    assert value(after, count, route=rule, method="GET") - value(before, count, route=rule, method="GET") == 3


def test_runs_created_and_finished_are_counted(client, auth, session_factory):  # type: ignore[no-untyped-def]
    job = create(client, auth, slug="metrics-runs")
    before = scrape(client)
    response = client.post(f"/v1/jobs/{job['id']}/trigger", json={}, headers=auth)
    assert response.status_code == 201, response.json
    run_id = response.json["id"]
    with session_factory() as session:
        effects = Effects()
        assert move(session, run_id, RunStatus.CANCELED, now=utcnow(), effects=effects) is not None
        commit_and_apply(session, effects, make_broker_for(client))
    after = scrape(client)
    created = "sluice_runs_created_total"
    finished = "sluice_runs_finished_total"
    assert value(after, created, triggered_by="manual") - value(before, created, triggered_by="manual") == 1
    assert value(after, finished, status="canceled") - value(before, finished, status="canceled") == 1


def make_broker_for(client):  # type: ignore[no-untyped-def]
    return client.application.extensions["sluice"].broker


def test_scrape_time_gauges(client, auth, session_factory, redis_client):  # type: ignore[no-untyped-def]
    job = create(client, auth, slug="metrics-gauges")
    for _ in range(3):
        assert client.post(f"/v1/jobs/{job['id']}/trigger", json={}, headers=auth).status_code == 201
    with session_factory() as session:  # age the oldest queued run by five minutes
        oldest = session.scalar(sa.select(sa.func.min(Run.queued_at)).where(Run.status == "queued"))
        session.execute(sa.update(Run).where(Run.queued_at == oldest)
                        .values(queued_at=oldest - timedelta(minutes=5)))
        session.commit()
    with session_factory() as session:  # one delayed run due 2 minutes ago, one due in an hour
        stored = session.get(Job, job["id"])
        assert stored is not None
        now = utcnow()
        factories.make_run(session, stored, status="delayed", due_at=now - timedelta(minutes=2))
        factories.make_run(session, stored, status="delayed", due_at=now + timedelta(hours=1))
        factories.make_run(session, stored, status="executing", started_at=now, heartbeat_at=now, attempt=1)
        session.commit()
    limits = Limits(redis_client)
    for run in ("r-1", "r-2"):
        decision = limits.acquire(LimitRequest(run_id=run, job_id=job["id"], max_concurrency=None,
                                               concurrency_key=None, max_concurrency_per_key=None,
                                               lease_ms=60_000))
        assert decision.admitted

    families = scrape(client)
    assert value(families, "sluice_queue_depth", queue="sluice.runs") == 3
    assert value(families, "sluice_queue_depth", queue="sluice.webhooks") == 0
    assert value(families, "sluice_runs_active", status="queued") == 3
    assert value(families, "sluice_runs_active", status="executing") == 1
    assert 300 <= value(families, "sluice_oldest_ready_run_age_seconds") < 360
    assert value(families, "sluice_runs_active", status="delayed") == 2
    assert 120 <= value(families, "sluice_oldest_overdue_delayed_run_seconds") < 180
    assert value(families, "sluice_job_slots_in_use", job_id=job["id"]) == 2  # the job has an executing run

    limits.release("r-1", job["id"], None)
    limits.release("r-2", job["id"], None)
    families = scrape(client)
    assert not [k for k in families["sluice_job_slots_in_use"] if ("job_id", job["id"]) in k[1]]


def test_metrics_answer_while_redis_is_down(settings):  # type: ignore[no-untyped-def]
    app = create_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))  # nothing listens on port 1
    try:
        families = scrape(app.test_client())
    finally:
        app.extensions["sluice"].close()
    assert "sluice_queue_depth" not in families and "sluice_job_slots_in_use" not in families
    assert "sluice_runs_active" in families and "sluice_oldest_ready_run_age_seconds" in families


def test_one_log_line_per_request_without_secrets(client, auth, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="sluice.api.request")
    secret_payload = {"name": "Logged", "slug": "logged-job", "endpoint_url": "http://127.0.0.1:9/x",
                      "webhook_secret": "never-in-the-log-1234"}
    response = client.post("/v1/jobs", json=secret_payload, headers={**auth, "X-Request-Id": "req-42"})
    assert response.status_code == 201
    client.get("/v1/jobs")  # 401: no project known
    client.get("/healthz")

    records = [r for r in caplog.records if r.name == "sluice.api.request"]
    assert len(records) == 3
    created, unauthorized, probe = records
    assert (created.method, created.route, created.status, created.request_id, created.project_id) == (
        "POST", "/v1/jobs", 201, "req-42", "proj-a")
    assert created.duration_ms >= 0 and created.levelno == logging.INFO
    assert unauthorized.status == 401 and not hasattr(unauthorized, "project_id")
    assert probe.route == "/healthz" and probe.levelno == logging.DEBUG
    everything = " ".join(str(vars(r)) for r in records)
    assert auth["Authorization"].split()[1] not in everything
    assert "never-in-the-log" not in everything and "Bearer" not in everything


MULTIPROC_SCRIPT = textwrap.dedent("""
    import sys
    import time
    from api.metrics import record_request
    from shared.metrics import exposition, observe_runs_created
    if sys.argv[1] == "record":
        record_request("GET", "/v1/jobs", 200, time.perf_counter() - 0.01)
        observe_runs_created("cron", 2)
    else:
        sys.stdout.write(exposition().decode())
""")


def test_multiprocess_mode_merges_every_process(tmp_path):  # type: ignore[no-untyped-def]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    for _ in range(2):  # e.g. two gunicorn workers
        subprocess.run([sys.executable, "-c", MULTIPROC_SCRIPT, "record"], env=env, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", MULTIPROC_SCRIPT, "show"], env=env, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("sluice_http_requests_total", (("method", "GET"), ("route", "/v1/jobs"),
                                                   ("status", "200")))] == 2
    assert samples[("sluice_runs_created_total", (("triggered_by", "cron"),))] == 4


@pytest.mark.parametrize("raw, expected", [("", 9101), ("0", None), ("9200", 9200)])
def test_metrics_port_setting(raw: str, expected: int | None) -> None:
    from shared.metrics import metrics_port

    assert metrics_port({"SLUICE_METRICS_PORT": raw}, 9101) == expected


def test_metrics_port_rejects_garbage() -> None:
    from shared.errors import ConfigError
    from shared.metrics import metrics_port

    with pytest.raises(ConfigError):
        metrics_port({"SLUICE_METRICS_PORT": "ninety"}, 9101)


def test_worker_side_counters(client, harness, httpserver, session_factory):  # type: ignore[no-untyped-def]
    """Attempt durations, re-delays and webhook outcomes, recorded by the real worker code paths."""
    from shared.db.models import WebhookDelivery
    from worker.webhooks import deliver

    httpserver.expect_request("/ok").respond_with_json({"ok": True})
    httpserver.expect_request("/hook").respond_with_data("", status=204)
    before = scrape(client)

    job = harness.job(endpoint_url=httpserver.url_for("/ok"), webhook_url=httpserver.url_for("/hook"))
    run = harness.run(job)
    assert harness.handle(run.id).action == "completed"
    with session_factory() as session:
        delivery_id = session.scalar(sa.select(WebhookDelivery.id).where(WebhookDelivery.run_id == run.id))
    assert delivery_id is not None
    deliver(delivery_id, session_factory=session_factory, settings=harness.settings, now_fn=utcnow)

    busy = harness.job(endpoint_url=httpserver.url_for("/ok"), max_concurrency=1)
    assert harness.limits.acquire(LimitRequest(run_id="holder", job_id=busy.id, max_concurrency=1,
                                               concurrency_key=None, max_concurrency_per_key=None,
                                               lease_ms=60_000)).admitted
    waiting = harness.run(busy)
    assert harness.handle(waiting.id).action == "redelayed"
    with session_factory() as session:  # the lease's holder, executing (the gauge reports jobs with such runs)
        factories.make_run(session, busy, status="executing", started_at=utcnow(), heartbeat_at=utcnow(), attempt=1)
        session.commit()

    after = scrape(client)

    def delta(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    assert delta("sluice_attempt_duration_seconds_count", outcome="success") == 1
    assert delta("sluice_runs_finished_total", status="completed") == 1
    assert delta("sluice_webhook_deliveries_total", outcome="delivered") == 1
    assert delta("sluice_run_redelays_total", reason="concurrency") == 1
    assert value(after, "sluice_job_slots_in_use", job_id=busy.id) == 1
