"""The per-key API rate limit (``SLUICE_API_RATE_LIMIT``) counts every request once, whether the front
layer serves it or hands it to Flask (or the console renders a page), and refuses the requests over it with
429 and ``Retry-After``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from api.app import create_app
from tests.integration.front_support import flask_paths
from tests.integration.jobs_support import assert_error

LIMIT = 6
JOB = {"name": "Limited", "slug": "limited", "endpoint_url": "http://127.0.0.1:9/e"}


@pytest.fixture(name="limited_app")
def limited_app_fixture(settings: Any) -> Iterator[Flask]:
    app = create_app(settings.with_overrides(api_rate_limit=(LIMIT, 86_400)))
    app.testing = True
    yield app
    app.extensions["sluice"].close()


def _counted(redis_client: Any) -> int:
    return sum(int(redis_client.get(key)) for key in redis_client.scan_iter("sluice:api-rate:*"))


def test_each_request_counts_once_on_either_path(limited_app: Flask, auth: dict[str, str], redis_client: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client = limited_app.test_client()
    job = client.post("/v1/jobs", json=JOB, headers=auth).get_json()  # Flask: 1
    through_flask = flask_paths(limited_app, monkeypatch)
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200  # front: 2
    assert client.get("/v1/jobs", headers=auth).status_code == 200  # front: 3
    assert client.post("/v1/jobs/limited/trigger", json={}, headers=auth).status_code == 201  # front: 4
    assert through_flask == [] and _counted(redis_client) == 4
    # Counted in front, then handed to Flask (no such job), which counts it itself: still once.
    assert client.get("/v1/jobs/nope", headers=auth).status_code == 404  # 5
    assert client.get("/v1/jobs/limited/versions", headers=auth).status_code == 200  # Flask: 6
    assert through_flask == ["/v1/jobs/nope", "/v1/jobs/limited/versions"] and _counted(redis_client) == LIMIT
    refused = client.get(f"/v1/jobs/{job['id']}", headers=auth)  # 7: over the limit, Flask answers
    assert_error(refused, 429)
    assert 0 < int(refused.headers["Retry-After"]) <= 86_400
    assert client.post("/v1/jobs/limited/trigger", json={}, headers=auth).status_code == 429  # 8
    assert _counted(redis_client) == LIMIT + 2
    assert through_flask[-2:] == [f"/v1/jobs/{job['id']}", "/v1/jobs/limited/trigger"]


def test_requests_without_a_valid_key_are_not_counted(limited_app: Flask, redis_client: Any) -> None:
    client = limited_app.test_client()
    for _ in range(LIMIT + 2):
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer sk_" + "0" * 64}).status_code == 401
    assert _counted(redis_client) == 0


def test_the_consoles_pages_count_too_and_say_when_to_come_back(limited_app: Flask, auth: dict[str, str]) -> None:
    client = limited_app.test_client()
    form = client.get("/ui/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    key = auth["Authorization"].removeprefix("Bearer ")
    assert client.post("/ui/sign-in", data={"api_key": key, "csrf_token": token, "next": "/ui/jobs"}).status_code == 303
    pages = [client.get("/ui/jobs") for _ in range(LIMIT + 1)]
    assert [page.status_code for page in pages] == [200] * LIMIT + [429]
    assert 0 < int(pages[-1].headers["Retry-After"]) <= 86_400
    assert "API rate limit" in pages[-1].get_data(as_text=True)
