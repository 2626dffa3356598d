"""The jobs list in front of Flask serves the renderings it kept (``api.job_page_cache``), but only of the
exact row versions the request's own statement reads, so every change shows on the next request, through
the API or not. Each page is compared with Flask's answer (which renders from scratch)."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

import api.job_page_cache
from api.front.job_list import JobList
from api.job_page_cache import RenderedJobs
from shared.db.engine import transaction
from shared.db.models import Job
from tests.integration.front_support import answer, both, create_jobs, front_of


@pytest.fixture(name="full_reads")
def full_reads_fixture(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many jobs each full read (miss) of a page rendered."""
    reads: list[int] = []
    real = api.job_page_cache.find_key_and_versioned_page

    def spy(*args: Any, **kwargs: Any) -> Any:
        key, versioned = real(*args, **kwargs)
        reads.append(len(versioned))
        return key, versioned

    monkeypatch.setattr(api.job_page_cache, "find_key_and_versioned_page", spy)
    return reads


def _rendered(app: Flask) -> RenderedJobs:
    return next(route for route in front_of(app).routes if isinstance(route, JobList)).rendered


def _both(app: Flask, path: str, headers: dict[str, str]) -> tuple[Any, Any]:
    front, flask = both(app, "GET", path, headers=headers)
    return answer(front), answer(flask)


def _same_page(app: Flask, path: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    front, flask = _both(app, path, {**auth, "X-Request-Id": "req-1"})
    assert front == flask, path
    assert front[0] == 200
    return json.loads(front[1])  # type: ignore[no-any-return]


def test_a_page_is_rendered_once_then_served_from_the_cache(app, client, auth, full_reads) -> None:
    create_jobs(client, auth, 4)
    first = _same_page(app, "/v1/jobs?limit=3", auth)
    assert full_reads == [4]  # three and the one that tells a next page exists
    for _ in range(3):
        assert _same_page(app, "/v1/jobs?limit=3", auth) == first
    assert _same_page(app, "/v1/jobs?limit=2", auth) == first[:2]  # another size, the same renderings
    assert full_reads == [4]
    assert len(_rendered(app)) == 4


def test_every_change_shows_on_the_next_request(app, client, auth, session_factory, full_reads) -> None:
    create_jobs(client, auth, 4)
    _same_page(app, "/v1/jobs", auth)
    ids = [job["id"] for job in _same_page(app, "/v1/jobs", auth)]

    assert client.patch(f"/v1/jobs/{ids[1]}", json={"name": "Renamed"}, headers=auth).status_code == 200
    page = _same_page(app, "/v1/jobs", auth)
    assert page[1]["name"] == "Renamed" and page[1]["version"] == 2

    assert client.post("/v1/jobs/batch-disable", json={"job_ids": [ids[2]]}, headers=auth).status_code == 200
    assert _same_page(app, "/v1/jobs", auth)[2]["enabled"] is False

    assert client.delete(f"/v1/jobs/{ids[3]}", headers=auth).status_code == 204
    assert [job["id"] for job in _same_page(app, "/v1/jobs", auth)] == ids[:3]

    newest = {"name": "Newest", "slug": "newest", "endpoint_url": "http://127.0.0.1:9/e"}
    assert client.post("/v1/jobs", json=newest, headers=auth).status_code == 201
    assert _same_page(app, "/v1/jobs", auth)[0]["slug"] == "newest"

    # A write that bypasses the API and leaves updated_at alone still makes a new row version.
    with transaction(session_factory) as s:
        s.execute(sa.update(Job).where(Job.id == ids[0]).values(description="edited in SQL"))
    assert _same_page(app, "/v1/jobs", auth)[1]["description"] == "edited in SQL"


def test_cursor_pages_are_cached_and_checked_too(app, client, auth, session_factory) -> None:
    create_jobs(client, auth, 5)
    pages: list[list[str]] = []
    for _ in range(2):  # rendered, then cached
        pages.clear()
        path = "/v1/jobs?limit=2"
        while True:
            fast, slow = _both(app, path, {**auth, "X-Request-Id": "req-1"})
            assert fast == slow
            pages.append([job["slug"] for job in json.loads(fast[1])])
            if "X-Next-Cursor" not in fast[2]:
                break
            path = f"/v1/jobs?limit=2&cursor={fast[2]['X-Next-Cursor']}"
    assert pages == [["front-4", "front-3"], ["front-2", "front-1"], ["front-0"]]


def test_a_write_outside_the_api_shows_on_the_next_page(app, client, session_factory, auth) -> None:
    create_jobs(client, auth, 3)
    first = client.get("/v1/jobs", headers=auth)
    again = client.get("/v1/jobs", headers=auth)
    assert first.status_code == again.status_code == 200 and first.get_data() == again.get_data()
    assert len(_rendered(app)) == 3
    target = json.loads(first.get_data())[0]["id"]
    with transaction(session_factory) as s:
        s.execute(sa.update(Job).where(Job.id == target).values(name="Changed"))
    assert json.loads(client.get("/v1/jobs", headers=auth).get_data())[0]["name"] == "Changed"


def test_big_integers_encode_alone_and_read_the_same(app, client, auth) -> None:
    """A job orjson cannot encode (an integer beyond 64 bits) is encoded by ``json`` on its own; the page
    reads the same as the Flask path's, which encodes the whole list that way."""
    body = {"name": "Big", "slug": "big", "endpoint_url": "http://127.0.0.1:9/e",
            "payload_schema": {"type": "object", "properties": {"n": {"maximum": 2**70}}}}
    assert client.post("/v1/jobs", json=body, headers=auth).status_code == 201
    small = {"name": "Small", "slug": "small", "endpoint_url": "http://127.0.0.1:9/e",
             "payload_schema": {"type": "object", "properties": {"n": {"multipleOf": 1e-7}}}}
    assert client.post("/v1/jobs", json=small, headers=auth).status_code == 201
    for _ in range(2):
        fast, slow = _both(app, "/v1/jobs", auth)
        assert fast[0] == slow[0] == 200 and json.loads(fast[1]) == json.loads(slow[1])
        assert json.loads(fast[1])[1]["payload_schema"]["properties"]["n"]["maximum"] == 2**70


# ------------------------------------------------------------------------------------ the cache on its own


def _job(job_id: str, name: str = "x") -> dict[str, Any]:
    return {"id": job_id, "name": name, "created_at": "2026-01-01T00:00:00.000000Z"}


def test_renderings_are_found_only_at_their_version() -> None:
    cache = RenderedJobs()
    assert cache.find([]) == []
    assert cache.keep(_job("a"), "7@t") == b'{"id":"a","name":"x","created_at":"2026-01-01T00:00:00.000000Z"}'
    cache.keep(_job("b"), "8@t")
    assert [entry[0] for entry in cache.find(["b 8@t", "a 7@t"]) or []] == ["b", "a"]
    assert cache.find(["a 7@t", "b 9@t"]) is None  # b changed
    assert cache.find(["a 7@t", "c 1@t"]) is None  # c never rendered here
    cache.keep(_job("a", "new"), "10@t")  # a newer version replaces the older
    assert cache.find(["a 7@t"]) is None and len(cache) == 2
    assert cache.held_bytes == sum(len(entry[1]) for entry in cache.find(["a 10@t", "b 8@t"]) or [])


def test_the_cache_starts_over_when_full_or_old() -> None:
    now = [0.0]
    size = len(RenderedJobs().keep(_job("a"), "1"))
    cache = RenderedJobs(max_bytes=2 * size, lifetime_secs=60, clock=lambda: now[0])
    cache.keep(_job("a"), "1")
    cache.keep(_job("b"), "1")
    cache.keep(_job("c"), "1")  # full: starts over with c
    assert len(cache) == 1 and cache.find(["c 1"]) is not None and cache.find(["a 1"]) is None
    now[0] = 61.0
    assert cache.find(["c 1"]) is None and len(cache) == 0


def test_the_byte_count_holds_under_concurrent_keeps() -> None:
    """Threads rendering the same jobs at once: the count of bytes held stays the bytes actually held."""
    cache = RenderedJobs()
    ids = [f"job-{i}" for i in range(16)]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        def keep_all(size: int) -> None:  # each thread renders the jobs at its own length
            for _ in range(2000):
                for job_id in ids:
                    cache.keep(_job(job_id, "n" * size), "1@t")

        threads = [threading.Thread(target=keep_all, args=(size,)) for size in (1, 40, 300, 2000)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    held = cache.find([f"{job_id} 1@t" for job_id in ids])
    assert held is not None
    assert cache.held_bytes == sum(len(entry[1]) for entry in held)
