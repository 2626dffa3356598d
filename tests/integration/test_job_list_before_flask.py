"""The plain jobs list is answered in front of Flask exactly as Flask answers it (status, body bytes,
paging headers, request id), and every other list request is Flask's. Each request is sent to the app and
to Flask alone, and the answers are compared."""

from __future__ import annotations

import pytest

from api.front.job_list import plain_query
from tests.integration.front_support import answer, both, create_jobs, flask_paths, key_case_headers


def _same(app, path: str, headers: dict[str, str], method: str = "GET") -> tuple[int, bytes, dict[str, str]]:  # type: ignore[no-untyped-def]
    front, flask = (answer(response) for response in both(app, method, path, headers=headers))
    assert front == flask, path
    return front


def test_plain_pages_are_served_in_front_like_flask(app, client, auth, monkeypatch) -> None:
    create_jobs(client, auth, 5)
    through_flask = flask_paths(app, monkeypatch)
    headers = {**auth, "X-Request-Id": "req-1"}
    first = _same(app, "/v1/jobs?limit=2", headers)
    assert first[0] == 200 and "X-Next-Cursor" in first[2]
    cursor = first[2]["X-Next-Cursor"]
    assert first[2]["Link"] == f'<http://localhost/v1/jobs?limit=2&cursor={cursor}>; rel="next"'
    queries = ["", "limit=007", "limit=500", f"cursor={cursor}", f"limit=2&cursor={cursor}",
               f"cursor={cursor}&limit=1", "limit=5", "limit=4"]  # 5: no next page; 4: one more
    for query in queries:
        _same(app, f"/v1/jobs?{query}" if query else "/v1/jobs", headers)
    assert _same(app, "/v1/jobs", auth)[2]["X-Request-Id"] == "generated"
    assert through_flask == []


def test_an_empty_project_and_a_read_only_key(app, session_factory, monkeypatch) -> None:
    from tests.conftest import make_key

    through_flask = flask_paths(app, monkeypatch)
    headers = {"Authorization": f"Bearer {make_key(session_factory, scopes='jobs:read')}"}
    assert _same(app, "/v1/jobs", headers)[:2] == (200, b"[]")
    assert through_flask == []


@pytest.mark.parametrize("case", [
    "filter-enabled", "filter-tag", "filter-slug", "project-id", "limit-zero", "limit-negative", "limit-text",
    "limit-empty", "limit-twice", "limit-escaped", "limit-plus", "limit-long", "cursor-garbage", "cursor-empty",
    "cursor-other-kind", "cursor-twice", "unknown-arg", "trailing-amp", "no-key", "bad-key", "revoked-key",
    "scope", "trailing-slash", "head",
])
def test_everything_else_is_answered_by_flask(app, client, auth, session_factory, monkeypatch, case) -> None:
    create_jobs(client, auth, 3)
    first = client.get("/v1/jobs?limit=1", headers=auth).headers["X-Next-Cursor"]
    queries = {"filter-enabled": "enabled=true", "filter-tag": "tag_key=n&tag_value=1", "filter-slug": "slug=front-1",
               "project-id": "project_id=proj-a", "limit-zero": "limit=0", "limit-negative": "limit=-1",
               "limit-text": "limit=abc", "limit-empty": "limit=", "limit-twice": "limit=1&limit=2",
               "limit-escaped": "limit=%32", "limit-plus": "limit=+2", "limit-long": "limit=" + "9" * 19,
               "cursor-garbage": "cursor=garbage", "cursor-empty": "cursor=",
               "cursor-other-kind": "cursor=WyJydW5zIiwiMjAyNi0wMS0wMVQwMDowMDowMC4wMDAwMDBaIiwieCJd",
               "cursor-twice": f"cursor={first}&cursor={first}", "unknown-arg": "limit=1&colour=red",
               "trailing-amp": "limit=1&"}
    path, method = f"/v1/jobs?{queries.get(case, 'limit=2')}", "GET"
    headers = key_case_headers(case, auth, session_factory)
    if case == "trailing-slash":
        path = "/v1/jobs/"
    elif case == "head":
        method = "HEAD"
    through_flask = flask_paths(app, monkeypatch)
    status = _same(app, path, headers, method)[0]
    assert through_flask == [path.split("?")[0]]
    assert status < 500


def test_pages_in_front_count_in_metrics(app, client, auth, monkeypatch) -> None:
    create_jobs(client, auth, 1)
    through_flask = flask_paths(app, monkeypatch)
    for _ in range(3):
        assert client.get("/v1/jobs?limit=1", headers=auth).status_code == 200
    assert through_flask == []
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
