"""A job read is answered in front of Flask exactly as Flask answers it (status, body bytes,
``X-Request-Id``), and every other request on a job path is Flask's. Each request is sent to the app and
to Flask alone, and the answers are compared."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.front_support import answer, both, flask_paths, key_case_headers

ROUTE = "/v1/jobs/<jobref:job>"


def _job(client: Any, auth: dict[str, str], slug: str = "front-get") -> dict[str, Any]:
    body = {"name": "Front ☃", "slug": slug, "endpoint_url": "http://127.0.0.1:9/e", "tags": {"team": "é"},
            "payload_schema": {"type": "object"}, "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_secret": "whsec_" + "a" * 32, "rate_limit_keys": [{"name": "customer", "max": 2,
                                                                        "window_secs": 10}]}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 201
    return response.get_json()  # type: ignore[no-any-return]


def _same(app: Any, path: str, headers: dict[str, str], method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    front, flask = (answer(response) for response in both(app, method, path, headers=headers))
    assert front == flask, path
    return front


def test_a_job_by_id_and_by_slug_is_served_in_front_like_flask(app, client, auth, monkeypatch) -> None:
    job = _job(client, auth)
    through_flask = flask_paths(app, monkeypatch)
    for ref in (job["id"], job["slug"], job["id"].upper()):
        assert _same(app, f"/v1/jobs/{ref}", {**auth, "X-Request-Id": "req-1"})[0] == 200, ref
    assert _same(app, f"/v1/jobs/{job['slug']}", auth)[2]["X-Request-Id"] == "generated"
    assert through_flask == []


@pytest.mark.parametrize("case", [
    "unknown-job", "other-project", "query", "batch", "batch-enable", "deeper", "no-key", "bad-key",
    "revoked-key", "scope", "non-ascii", "head",
])
def test_everything_else_is_answered_by_flask(app, client, auth, other_auth, session_factory, monkeypatch,
                                              case) -> None:
    job = _job(client, auth)
    _job(client, other_auth, "theirs")
    refs = {"unknown-job": "nope", "other-project": "theirs", "batch": "batch", "batch-enable": "batch-enable",
            "deeper": f"{job['id']}/versions", "non-ascii": "frönt-get"}
    path = f"/v1/jobs/{refs.get(case, job['id'])}" + ("?x=1" if case == "query" else "")
    headers = key_case_headers(case, auth, session_factory)
    through_flask = flask_paths(app, monkeypatch)
    status = _same(app, path, headers, "HEAD" if case == "head" else "GET")[0]
    assert through_flask == [path.split("?")[0]]
    assert status < 500


def test_reads_in_front_count_in_metrics(app, client, auth, monkeypatch) -> None:
    job = _job(client, auth)
    through_flask = flask_paths(app, monkeypatch)
    for _ in range(3):
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200
    assert through_flask == []
    text = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("sluice_http_requests_total{")
                and f'route="{ROUTE}"' in x and 'method="GET"' in x and 'status="200"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 3
