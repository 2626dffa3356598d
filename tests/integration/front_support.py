"""Helpers of the tests of the requests answered in front of Flask (``api.front``).

Each such test sends a request twice: to the app (the front layer, which serves it or hands it to Flask)
and to Flask alone (``Flask.wsgi_app`` behind a plain werkzeug client). The two answers must be the same.
Whether the front layer handed a request to Flask is observed by wrapping the layer's ``inner``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.test import Client

from api.front.layer import FrontLayer
from shared.db.engine import transaction
from shared.db.models import ApiKey
from tests.conftest import make_key

HEADERS = ("Content-Type", "Content-Length", "X-Next-Cursor", "Link", "X-Request-Id", "Location", "Retry-After")


def front_of(app: Flask) -> FrontLayer:
    layer = app.wsgi_app
    assert isinstance(layer, FrontLayer)
    return layer


def flask_paths(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests that reach Flask from now on (the others the front layer answered)."""
    layer = front_of(app)
    seen: list[str] = []
    inner = layer.inner

    def recording(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(environ["PATH_INFO"].encode("latin-1").decode())  # WSGI strings are bytes as latin-1
        return inner(environ, start_response)

    monkeypatch.setattr(layer, "inner", recording)
    return seen


def flask_alone(app: Flask) -> Client:
    """A client of the app's Flask WSGI callable itself (the class's ``wsgi_app``), without the front layer."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return Flask.wsgi_app(app, environ, start_response)

    return Client(wsgi, app.response_class)


def both(app: Flask, method: str, path: str, **kwargs: Any) -> tuple[Any, Any]:
    """(the app's response, Flask's response) to the same request."""
    return (app.test_client().open(path, method=method, **kwargs),
            flask_alone(app).open(path, method=method, **kwargs))


def answer(response: Any) -> tuple[int, bytes, dict[str, str]]:
    """Status, body bytes and the headers either path may set; a generated request id as "generated"."""
    headers = {name: response.headers[name] for name in HEADERS if name in response.headers}
    if headers.get("X-Request-Id", "req-1") != "req-1":
        headers["X-Request-Id"] = "generated"
    return response.status_code, response.get_data(), headers


def key_case_headers(case: str, auth: dict[str, str], session_factory: Any) -> dict[str, str]:
    """Headers for the key cases the front layer leaves to Flask ("no-key", "bad-key", "revoked-key" —
    which revokes every key —, "scope"); for any other case the valid key. All with ``X-Request-Id: req-1``."""
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


def create_jobs(client: Any, auth: dict[str, str], count: int) -> list[dict[str, Any]]:
    """``count`` jobs with varied fields (a payload schema on every other one, a masked secret), oldest first."""
    made = []
    for i in range(count):
        body = {"name": f"Front ☃ {i}", "slug": f"front-{i}", "endpoint_url": "http://127.0.0.1:9/e",
                "tags": {"n": str(i)}, "payload_schema": {"type": "object"} if i % 2 else None,
                "webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": f"whsec_{i:032d}"}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 201, response.get_json()
        made.append(response.get_json())
    return made
