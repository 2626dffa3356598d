"""``api.fast_list``: the lean jobs-list path answers exactly as the Flask path does (status, body bytes,
paging headers, request id), and hands every other request to Flask. Each request is sent twice, to the
app with and without the lean path, and the answers are compared."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

import api.lean_get
from api.fast_list import FastJobList, plain_query
from shared.db.engine import transaction
from shared.db.models import ApiKey
from tests.conftest import make_key

HEADERS = ("Content-Type", "Content-Length", "X-Next-Cursor", "Link", "X-Request-Id")


def _lean(app: Flask, kind: type[Any] = FastJobList) -> Any:
    """The app's lean path of class ``kind`` (they wrap one another in front of Flask)."""
    wsgi: Any = app.wsgi_app
    while not isinstance(wsgi, kind):
        wsgi = wsgi.inner
    return wsgi


def _answer(response: Any) -> tuple[int, bytes, dict[str, str]]:
    headers = {name: response.headers[name] for name in HEADERS if name in response.headers}
    if headers.get("X-Request-Id", "req-1") != "req-1":  # generated per request
        headers["X-Request-Id"] = "generated"
    return response.status_code, response.get_data(), headers


def _both(app: Flask, path: str, headers: dict[str, str], method: str = "get",
          kind: type[Any] = FastJobList) -> tuple[Any, Any]:
    """The answers of the app with and without its lean path ``kind``."""
    lean = _lean(app, kind)
    assert lean.enabled
    fast = getattr(app.test_client(), method)(path, headers=headers)
    lean.enabled = False
    try:
        slow = getattr(app.test_client(), method)(path, headers=headers)
    finally:
        lean.enabled = True
    return _answer(fast), _answer(slow)


def lean_statuses(monkeypatch: pytest.MonkeyPatch, route: str) -> list[int]:
    """Statuses a lean path answered itself for ``route`` (they log through ``api.lean_get.log_request``)."""
    statuses: list[int] = []
    real = api.lean_get.log_request

    def spy(*args: Any) -> None:
        if args[1] == route:
            statuses.append(args[3])
        real(*args)

    monkeypatch.setattr(api.lean_get, "log_request", spy)
    return statuses


@pytest.fixture(name="served")
def served_fixture(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Statuses the lean list path answered itself."""
    return lean_statuses(monkeypatch, "/v1/jobs")


def key_case_headers(case: str, auth: dict[str, str], session_factory: Any) -> dict[str, str]:
    """Headers for the key cases every lean path leaves to Flask ("no-key", "bad-key", "revoked-key" — which
    revokes every key —, "scope"); for any other case the valid key. All with ``X-Request-Id: req-1``."""
    if case == "no-key":
        return {"X-Request-Id": "req-1"}
    if case == "bad-key":
        return {"Authorization": "Bearer sk_not_a_key", "X-Request-Id": "req-1"}
    if case == "revoked-key":
        with transaction(session_factory) as s:
            s.execute(sa.update(ApiKey).values(revoked_at=sa.func.now()))
    if case == "scope":
        return {"Authorization": f"Bearer {make_key(session_factory, scopes='runs:read')}", "X-Request-Id": "req-1"}
    return {**auth, "X-Request-Id": "req-1"}


def _jobs(client: Any, auth: dict[str, str], count: int) -> None:
    for i in range(count):
        body = {"name": f"Lean ☃ {i}", "slug": f"lean-{i}", "endpoint_url": "http://127.0.0.1:9/e",
                "tags": {"n": str(i)}, "payload_schema": {"type": "object"} if i % 2 else None,
                "webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": f"whsec_{i:032d}"}
        assert client.post("/v1/jobs", json=body, headers=auth).status_code == 201


def test_plain_pages_are_served_by_the_lean_path_like_flask(app, client, auth, served) -> None:
    _jobs(client, auth, 5)
    headers = {**auth, "X-Request-Id": "req-1"}
    fast, slow = _both(app, "/v1/jobs?limit=2", headers)
    assert fast == slow and fast[0] == 200 and "X-Next-Cursor" in fast[2]
    cursor = fast[2]["X-Next-Cursor"]
    assert fast[2]["Link"] == f'<http://localhost/v1/jobs?limit=2&cursor={cursor}>; rel="next"'
    queries = ["", "limit=007", "limit=500", f"cursor={cursor}", f"limit=2&cursor={cursor}",
               f"cursor={cursor}&limit=1", "limit=5", "limit=4"]  # 5: no next page; 4: one more
    for query in queries:
        fast, slow = _both(app, f"/v1/jobs?{query}" if query else "/v1/jobs", headers)
        assert fast == slow, query
    fast, slow = _both(app, "/v1/jobs", auth)  # a generated request id
    assert fast == slow and fast[2]["X-Request-Id"] == "generated"
    assert served == [200] * (len(queries) + 2)


def test_an_empty_project_and_a_read_only_key(app, session_factory, served) -> None:
    headers = {"Authorization": f"Bearer {make_key(session_factory, scopes='jobs:read')}"}
    fast, slow = _both(app, "/v1/jobs", headers)
    assert fast == slow and fast[:2] == (200, b"[]")
    assert served == [200]


@pytest.mark.parametrize("case", [
    "filter-enabled", "filter-tag", "filter-slug", "project-id", "limit-zero", "limit-negative", "limit-text",
    "limit-empty", "limit-twice", "limit-escaped", "limit-plus", "limit-long", "cursor-garbage", "cursor-empty",
    "cursor-other-kind", "cursor-twice", "unknown-arg", "trailing-amp", "no-key", "bad-key", "revoked-key",
    "scope", "trailing-slash", "head",
])
def test_everything_else_is_answered_by_flask(app, client, auth, session_factory, served, case) -> None:
    _jobs(client, auth, 3)
    first = client.get("/v1/jobs?limit=1", headers=auth).headers["X-Next-Cursor"]
    served.clear()
    queries = {"filter-enabled": "enabled=true", "filter-tag": "tag_key=n&tag_value=1", "filter-slug": "slug=lean-1",
               "project-id": "project_id=proj-a", "limit-zero": "limit=0", "limit-negative": "limit=-1",
               "limit-text": "limit=abc", "limit-empty": "limit=", "limit-twice": "limit=1&limit=2",
               "limit-escaped": "limit=%32", "limit-plus": "limit=+2", "limit-long": "limit=" + "9" * 19,
               "cursor-garbage": "cursor=garbage", "cursor-empty": "cursor=",
               "cursor-other-kind": "cursor=WyJydW5zIiwiMjAyNi0wMS0wMVQwMDowMDowMC4wMDAwMDBaIiwieCJd",
               "cursor-twice": f"cursor={first}&cursor={first}", "unknown-arg": "limit=1&colour=red",
               "trailing-amp": "limit=1&"}
    path, method = f"/v1/jobs?{queries.get(case, 'limit=2')}", "get"
    headers = key_case_headers(case, auth, session_factory)
    if case == "trailing-slash":
        path = "/v1/jobs/"
    elif case == "head":
        method = "head"
    fast, slow = _both(app, path, headers, method)
    assert served == []  # Flask answered it
    assert fast == slow and fast[0] < 500


def test_the_lean_path_is_off_with_the_api_rate_limit(app) -> None:
    from api.fast_list import FastJobList as Lean

    svc = app.extensions["sluice"]
    limited = type(svc)(settings=svc.settings.with_overrides(api_rate_limit=(10, 60)), engine=svc.engine,
                        session_factory=svc.session_factory, redis=svc.redis, broker=svc.broker,
                        read_session_factory=svc.read_session_factory)
    assert not Lean(limited, app.wsgi_app).enabled and Lean(svc, app.wsgi_app).enabled


def test_lean_pages_count_in_metrics(app, client, auth, served) -> None:
    _jobs(client, auth, 1)
    for _ in range(3):
        assert client.get("/v1/jobs?limit=1", headers=auth).status_code == 200
    assert served == [200] * 3
    text = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("sluice_http_requests_total{")
                and 'route="/v1/jobs"' in x and 'method="GET"' in x and 'status="200"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 3


def test_plain_query_takes_only_one_valid_limit_and_cursor() -> None:
    assert plain_query("") == (None, None)
    assert plain_query("limit=3&cursor=abc_-9") == (3, "abc_-9")
    for query in ("limit=0", "limit=1&limit=1", "cursor=a&cursor=a", "limit=1&", "&", "limit=%31", "x=1",
                  "cursor=a=", "limit=1;cursor=a", "LIMIT=1"):
        assert plain_query(query) is None, query


def test_a_killed_connection_is_answered_by_the_flask_path(settings, session_factory, auth) -> None:
    """As ``sluice api`` runs it (prepared statements on the driver cursor): a read failing on a dead pooled
    connection is handed to Flask, whose answer is its usual 503 or, on a fresh connection, the page."""
    from api.app import create_app
    from tests.integration.test_api_driver_path import _kill_idle_app_connections

    app = create_app(settings)
    app.testing = True
    try:
        client = app.test_client()
        _jobs(client, auth, 1)
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        _kill_idle_app_connections(session_factory)
        statuses = [client.get("/v1/jobs", headers=auth).status_code for _ in range(3)]
        assert set(statuses) <= {200, 503} and statuses[-1] == 200, statuses
    finally:
        svc = app.extensions["sluice"]
        svc.engine.dispose()
        svc.read_session_factory.kw["bind"].dispose()
