"""Oversized pages: runs carrying megabyte payloads and results, jobs carrying large schemas, end a page
early, with a cursor, instead of making a response of hundreds of megabytes; following the cursors still
lists every item once."""

from __future__ import annotations

import json

import sqlalchemy as sa

from api.pagination import PAGE_MAX_BYTES
from shared.db.models import Job, Run
from tests.integration.front_support import both
from tests.integration.jobs_support import create

BIG = "x" * 900_000  # a payload string near the 1 MiB cap


def test_a_page_of_large_runs_ends_early_with_a_cursor(client, auth, session_factory):
    job = create(client, auth, "heavy")
    for i in range(12):
        response = client.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {"big": BIG, "i": i}}, headers=auth)
        assert response.status_code == 201
    with session_factory() as session:  # half of them also finished with a large result
        ids = session.scalars(sa.select(Run.id).order_by(Run.created_at)).all()
        session.execute(sa.update(Run).where(Run.id.in_(ids[::2])).values(result={"echo": BIG}))
        session.commit()
    seen: list[str] = []
    pages = 0
    url = "/v1/runs?limit=200"
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200
        assert len(response.data) <= PAGE_MAX_BYTES + 2 * 1024 * 1024  # the budget plus at most one run
        items = json.loads(response.data)
        assert items
        seen += [item["id"] for item in items]
        pages += 1
        cursor = response.headers.get("X-Next-Cursor")
        url = f"/v1/runs?limit=200&cursor={cursor}" if cursor else ""
        assert (cursor is None) == ('rel="next"' not in response.headers.get("Link", 'rel="next"') or cursor is None)
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)) == 12
    assert pages >= 3


def test_small_runs_still_fill_a_page(client, auth):
    job = create(client, auth, "light")
    response = client.post(f"/v1/jobs/{job['id']}/trigger/bulk", json={"items": [{"payload": {"i": i}}
                                                                                 for i in range(30)]}, headers=auth)
    assert response.status_code in (200, 201)
    page = client.get("/v1/runs?limit=25", headers=auth)
    assert len(page.get_json()) == 25 and page.headers.get("X-Next-Cursor")
    rest = client.get(f"/v1/runs?limit=25&cursor={page.headers['X-Next-Cursor']}", headers=auth)
    assert len(rest.get_json()) == 5 and rest.headers.get("X-Next-Cursor") is None
    assert len(client.get(f"/v1/jobs/{job['id']}/runs", headers=auth).get_json()) == 30


def test_a_page_of_large_jobs_ends_early_with_a_cursor(app, client, auth, session_factory):
    jobs = [create(client, auth, f"schema-{i}") for i in range(8)]
    with session_factory() as session:  # schemas as large as rows written before schemas were capped
        big = {"type": "object", "description": "d" * 900_000}
        session.execute(sa.update(Job).values(payload_schema=big))
        session.commit()
    for path in ("/v1/jobs?limit=200", "/v1/jobs?limit=7", "/v1/jobs?enabled=true"):
        seen: list[str] = []
        url = path
        while url:
            front, flask = both(app, "GET", url, headers=auth)  # the page served before Flask, and Flask's
            assert front.status_code == flask.status_code == 200
            assert front.data == flask.data
            assert front.headers.get("X-Next-Cursor") == flask.headers.get("X-Next-Cursor")
            assert len(flask.data) <= PAGE_MAX_BYTES + 1024 * 1024
            seen += [job["id"] for job in json.loads(flask.data)]
            cursor = flask.headers.get("X-Next-Cursor")
            separator = "&" if "?" in path else "?"
            url = f"{path}{separator}cursor={cursor}" if cursor else ""
        assert sorted(seen) == sorted(job["id"] for job in jobs), path
