"""``api.fast_job_get``: the lean job read answers exactly as the Flask path does (status, body bytes,
``X-Request-Id``), and hands every other request to Flask. Each request is sent to the app with and
without the lean path and the answers are compared."""

from __future__ import annotations

from typing import Any

import pytest

from api.fast_job_get import FastJobGet
from tests.integration.test_fast_list import _both, key_case_headers, lean_statuses

ROUTE = "/v1/jobs/<jobref:job>"


@pytest.fixture(name="served")
def served_fixture(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return lean_statuses(monkeypatch, ROUTE)


def _job(client: Any, auth: dict[str, str], slug: str = "lean-get") -> dict[str, Any]:
    body = {"name": "Lean ☃", "slug": slug, "endpoint_url": "http://127.0.0.1:9/e", "tags": {"team": "é"},
            "payload_schema": {"type": "object"}, "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_secret": "whsec_" + "a" * 32, "rate_limit_keys": [{"name": "customer", "max": 2,
                                                                        "window_secs": 10}]}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 201
    return response.get_json()  # type: ignore[no-any-return]


def test_a_job_by_id_and_by_slug_is_served_like_flask(app, client, auth, served) -> None:
    job = _job(client, auth)
    for ref in (job["id"], job["slug"], job["id"].upper()):
        fast, slow = _both(app, f"/v1/jobs/{ref}", {**auth, "X-Request-Id": "req-1"}, kind=FastJobGet)
        assert fast == slow and fast[0] == 200, ref
    fast, slow = _both(app, f"/v1/jobs/{job['slug']}", auth, kind=FastJobGet)  # a generated request id
    assert fast == slow and fast[2]["X-Request-Id"] == "generated"
    assert served == [200] * 4


@pytest.mark.parametrize("case", [
    "unknown-job", "other-project", "query", "batch", "batch-enable", "deeper", "no-key", "bad-key",
    "revoked-key", "scope", "non-ascii", "head",
])
def test_everything_else_is_answered_by_flask(app, client, auth, other_auth, session_factory, served,
                                              case) -> None:
    job = _job(client, auth)
    _job(client, other_auth, "theirs")
    served.clear()
    refs = {"unknown-job": "nope", "other-project": "theirs", "batch": "batch", "batch-enable": "batch-enable",
            "deeper": f"{job['id']}/versions", "non-ascii": "lëan-get"}
    path = f"/v1/jobs/{refs.get(case, job['id'])}" + ("?x=1" if case == "query" else "")
    headers = key_case_headers(case, auth, session_factory)
    fast, slow = _both(app, path, headers, "head" if case == "head" else "get", kind=FastJobGet)
    assert served == []  # Flask answered it
    assert fast == slow and fast[0] < 500


def test_lean_reads_count_in_metrics(app, client, auth, served) -> None:
    job = _job(client, auth)
    for _ in range(3):
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200
    assert served == [200] * 3
    text = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("sluice_http_requests_total{")
                and f'route="{ROUTE}"' in x and 'method="GET"' in x and 'status="200"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 3
