"""Hostile requests at the API's edge: NUL in paths, queries and cursors, slugs that end in a newline, deep
bodies, files beside the server, key-shaped tokens with odd page sizes, bound values in errors."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.jobs_support import assert_error, create


def _cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


@pytest.mark.parametrize("path", [
    "/v1/jobs/a%00b", "/v1/jobs/a%00b/trigger", "/v1/jobs/a%00b/versions", "/v1/jobs/a%00b/health",
    "/v1/jobs/a%00b/dependencies", "/v1/jobs/a%00b/runs", "/v1/jobs/a%00b/clone",
])
def test_nul_in_a_path_segment_is_a_400(client, auth, path):
    create(client, auth, "target")
    for method in ("GET", "POST", "PATCH", "DELETE"):
        response = client.open(path, method=method, headers=auth, json={})
        if response.status_code == 405:
            continue
        assert_error(response, 400, "path: must not contain the NUL character (%00)")


@pytest.mark.parametrize("query", ["cursor=%00", "slug=a%00", "tag=team:%00", "status=%00", "job=%00",
                                   "a%00=1"])
def test_nul_in_a_query_argument_is_a_400(client, auth, query):
    for path in ("/v1/jobs", "/v1/runs"):
        response = client.get(f"{path}?{query}", headers=auth)
        assert_error(response, 400)
        assert "NUL" in response.json["message"]


def test_a_deeply_nested_cursor_is_a_400(client, auth):
    job = create(client, auth, "target")
    deep = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode().rstrip("=")
    for path in ("/v1/jobs", "/v1/runs", f"/v1/runs?job={job['id']}", "/v1/jobs/target/versions"):
        separator = "&" if "?" in path else "?"
        assert_error(client.get(f"{path}{separator}cursor={deep}", headers=auth), 400, "cursor: malformed cursor")


def test_nul_inside_a_decoded_cursor_is_a_400(client, auth):
    job = create(client, auth, "target")
    jobs_cursor = _cursor("jobs", "2026-01-01T00:00:00.000000Z", "a\u0000b")
    assert_error(client.get(f"/v1/jobs?cursor={jobs_cursor}", headers=auth), 400, "cursor: malformed cursor")
    assert_error(client.get(f"/v1/jobs?limit=7&cursor={jobs_cursor}", headers=auth), 400,
                 "cursor: malformed cursor")
    for kind, path in (("runs", "/v1/runs"), ("runs", f"/v1/runs?job={job['id']}")):
        cursor = _cursor(kind, "2026-01-01T00:00:00.000000Z", "\u0000")
        separator = "&" if "?" in path else "?"
        assert client.get(f"{path}{separator}cursor={cursor}", headers=auth).status_code == 400


def test_a_slug_is_matched_whole(client, auth):
    response = client.post("/v1/jobs", json={"name": "n", "slug": "abc\n", "endpoint_url": "http://127.0.0.1:9/"},
                           headers=auth)
    assert_error(response, 422)
    assert "slug" in response.json["errors"]
    job = create(client, auth, "abc")
    response = client.patch(f"/v1/jobs/{job['id']}", json={"slug": "abc\n"}, headers=auth)
    assert_error(response, 422)


def test_a_version_id_or_uuid_with_a_trailing_newline_is_not_one(client, auth):
    job = create(client, auth, "target")
    assert client.get(f"/v1/jobs/{job['id']}%0A", headers=auth).status_code == 404
    assert client.get(f"/v1/jobs/target/versions/{job['version_id']}%0A", headers=auth).status_code in (400, 404)


@pytest.mark.parametrize("depth", [129, 500, 980])
def test_a_payload_nested_near_the_interpreters_limit_is_a_400(client, auth, depth):
    create(client, auth, "target")
    payload = "[" * depth + "]" * depth
    for path, raw in (("/v1/jobs/target/trigger", '{"payload": ' + payload + "}"),
                      ("/v1/jobs/target/trigger/bulk", '{"items": [{"payload": ' + payload + "}]}")):
        response = client.post(path, data=raw, headers={**auth, "Content-Type": "application/json"})
        assert_error(response, 400, "Malformed JSON body: nested deeper than 128 levels")


def test_a_deep_payload_in_utf16_is_a_400_too(client, auth):
    create(client, auth, "target")
    raw = ('{"payload": ' + "[" * 980 + "]" * 980 + "}").encode("utf-16-le")
    response = client.post("/v1/jobs/target/trigger", data=raw, headers={**auth, "Content-Type": "application/json"})
    assert_error(response, 400, "Malformed JSON body: nested deeper than 128 levels")


def test_a_payload_nested_within_the_limit_is_accepted(client, auth):
    create(client, auth, "target")
    payload = "[" * 120 + "]" * 120
    response = client.post("/v1/jobs/target/trigger", data='{"payload": ' + payload + "}",
                           headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 201


def test_files_beside_the_server_are_never_served(settings, tmp_path, monkeypatch):
    from api.app import create_app

    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "secret.txt").write_text("do not serve")
    monkeypatch.chdir(tmp_path)
    app = create_app(settings)
    try:
        response = app.test_client().get("/static/secret.txt")
        assert response.status_code == 404
        assert b"do not serve" not in response.data
    finally:
        app.extensions["sluice"].close()


def test_key_shaped_tokens_never_prepare_a_statement_per_page_size(app, client):
    token = {"Authorization": "Bearer sk_" + "0" * 64}  # shaped like a key, unknown
    for limit in range(1, 41):
        assert client.get(f"/v1/jobs?limit={limit}", headers=token).status_code == 401
    # Sequential requests use one pooled read connection: its prepared statements are what they left.
    with app.extensions["sluice"].read_engine.connect() as connection:
        names = connection.execute(sa.text("SELECT name FROM pg_prepared_statements")).scalars().all()
    assert len([name for name in names if "page" in name or "versions" in name]) <= 8, names


def test_bound_values_never_reach_error_text(db_engine):
    secret = "whsec_do_not_log_me"
    with db_engine.connect() as connection, pytest.raises(sa.exc.DBAPIError) as raised:
        connection.execute(sa.text("SELECT :value, 1 / 0"), {"value": secret})
    assert "division by zero" in str(raised.value)
    assert secret not in str(raised.value)


def test_the_dev_key_file_is_private_from_its_creation(settings, tmp_path, monkeypatch):
    from shared.cli.dev import ensure_dev_key

    # A later chmod would come too late (the file is readable in between): creation alone must do it.
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    old = os.umask(0o022)
    try:
        key_path = tmp_path / "dev-key"
        key = ensure_dev_key(settings.database_url, key_path)
        assert key_path.stat().st_mode & 0o777 == 0o600
        assert key_path.read_text().strip() == key
        assert ensure_dev_key(settings.database_url, key_path) == key  # kept while it still authenticates
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-key"]  # no temporary file left behind
    finally:
        os.umask(old)
