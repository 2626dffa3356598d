"""GET /v1/jobs (§3.1, §1.6): filters, keyset pagination, Link/X-Next-Cursor, limit and cursor errors."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from shared.clock import utcnow
from tests.factories import make_job
from tests.integration.jobs_support import assert_error, create


def _seed(session_factory, count: int, project: str = "proj-a") -> list[str]:
    """``count`` jobs, several sharing each created_at (ties broken by id), returned newest first."""
    base = utcnow() - timedelta(hours=1)
    ids = []
    with session_factory() as s:
        for i in range(count):
            job = make_job(s, project, slug=f"j-{i:04d}", now=base + timedelta(seconds=i // 3),
                           tags={"parity": "even" if i % 2 == 0 else "odd"} if i % 5 else {},
                           enabled=i % 4 != 0)
            ids.append((job.created_at, job.id))
        s.commit()
    return [job_id for _, job_id in sorted(ids, reverse=True)]


def test_pagination_visits_every_job_once_in_order(client, auth, session_factory):
    expected = _seed(session_factory, 121)
    seen, url, pages = [], "/v1/jobs?limit=25", 0
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200
        assert isinstance(response.json, list)
        seen += [job["id"] for job in response.json]
        pages += 1
        cursor = response.headers.get("X-Next-Cursor")
        link = response.headers.get("Link")
        assert (cursor is None) == (link is None)
        if cursor:
            target, rel = link.split(";")
            assert rel.strip() == 'rel="next"'
            parts = urlsplit(target.strip("<> "))
            assert parts.scheme == "http" and parts.path == "/v1/jobs"
            assert parse_qs(parts.query) == {"limit": ["25"], "cursor": [cursor]}
            url = f"{parts.path}?{parts.query}"
        else:
            url = None
    assert seen == expected and pages == 5


def test_items_created_after_page_one_never_appear(client, auth, session_factory):
    _seed(session_factory, 10)
    first = client.get("/v1/jobs?limit=4", headers=auth)
    create(client, auth, "late")
    rest = client.get(f"/v1/jobs?limit=200&cursor={first.headers['X-Next-Cursor']}", headers=auth)
    assert "late" not in [j["slug"] for j in rest.json] and len(rest.json) == 6


def test_default_limit_and_clamp(client, auth, session_factory):
    _seed(session_factory, 230)
    assert len(client.get("/v1/jobs", headers=auth).json) == 50
    response = client.get("/v1/jobs?limit=1000&enabled=true", headers=auth)
    assert len(response.json) == 172  # 230 minus every 4th (58 disabled); fits in one clamped page
    response = client.get("/v1/jobs?limit=500", headers=auth)
    assert len(response.json) == 200
    query = parse_qs(urlsplit(response.headers["Link"].split(";")[0].strip("<>")).query)
    assert query["limit"] == ["200"]


def test_filters_are_kept_in_link_and_combined(client, auth, session_factory):
    _seed(session_factory, 40)
    response = client.get("/v1/jobs?tag_key=parity&tag_value=even&enabled=true&limit=3", headers=auth)
    assert all(j["tags"].get("parity") == "even" and j["enabled"] for j in response.json)
    query = parse_qs(urlsplit(response.headers["Link"].split(";")[0].strip("<>")).query)
    assert query["tag_key"] == ["parity"] and query["tag_value"] == ["even"] and query["enabled"] == ["true"]
    collected, url = [], "/v1/jobs?tag_key=parity&tag_value=even&enabled=true&limit=3"
    while url:
        page = client.get(url, headers=auth)
        collected += page.json
        nxt = page.headers.get("X-Next-Cursor")
        url = f"/v1/jobs?tag_key=parity&tag_value=even&enabled=true&limit=3&cursor={nxt}" if nxt else None
    everything = client.get("/v1/jobs?limit=200", headers=auth).json
    assert [j["id"] for j in collected] == [
        j["id"] for j in everything if j["tags"].get("parity") == "even" and j["enabled"]]
    having_key = client.get("/v1/jobs?tag_key=parity&limit=200", headers=auth).json
    assert len(having_key) == len([j for j in everything if "parity" in j["tags"]])
    disabled = client.get("/v1/jobs?enabled=FALSE&limit=200", headers=auth).json
    assert disabled and all(not j["enabled"] for j in disabled)
    assert [j["slug"] for j in client.get("/v1/jobs?slug=j-0007", headers=auth).json] == ["j-0007"]
    assert client.get("/v1/jobs?slug=missing", headers=auth).json == []


def test_only_the_callers_project_is_listed(client, auth, other_auth, session_factory):
    _seed(session_factory, 3)
    _seed(session_factory, 2, project="proj-b")
    assert len(client.get("/v1/jobs", headers=auth).json) == 3
    assert len(client.get("/v1/jobs", headers=other_auth).json) == 2
    assert client.get("/v1/jobs?project_id=proj-a", headers=auth).status_code == 200
    assert_error(client.get("/v1/jobs?project_id=proj-b", headers=auth), 403)


def test_query_validation(client, auth):
    for query in ("limit=0", "limit=-1", "limit=abc", "limit=1.5", "enabled=yes", "tag_value=x"):
        assert_error(client.get(f"/v1/jobs?{query}", headers=auth), 422)
    error = assert_error(client.get("/v1/jobs?tag_value=x", headers=auth), 422)
    assert "tag_value" in error["errors"]


def test_cursor_errors_are_400(client, auth, session_factory):
    _seed(session_factory, 3)
    for cursor in ("garbage!!", "e30", "WyJ2ZXJzaW9ucyIsMV0", "WyJqb2JzIiwibm90LWEtdGltZSIsIngiXQ"):
        assert_error(client.get(f"/v1/jobs?cursor={cursor}", headers=auth), 400)
    # a cursor from another list endpoint
    job = create(client, auth, "with-versions")
    for i in range(3):
        client.patch(f"/v1/jobs/{job['id']}", json={"description": str(i)}, headers=auth)
    cursor = client.get(f"/v1/jobs/{job['id']}/versions?limit=1", headers=auth).headers["X-Next-Cursor"]
    assert_error(client.get(f"/v1/jobs?cursor={cursor}", headers=auth), 400)
