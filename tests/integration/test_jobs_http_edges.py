"""Request edges on the jobs routes (§1.1, §1.4, §1.5, §9): precedence, tenant isolation and scopes."""

from __future__ import annotations

import pytest

from tests.conftest import make_key
from tests.integration.jobs_support import assert_error, create, job_body

UNKNOWN = "01900000-0000-7000-8000-000000000000"
# (method, path template, body) for every jobs route; {job} / {ver} / {dep} are filled per test
ROUTES = [
    ("GET", "/v1/jobs", None),
    ("POST", "/v1/jobs", job_body("z")),
    ("POST", "/v1/jobs/batch", [job_body("z")]),
    ("POST", "/v1/jobs/batch-enable", {"ids": ["x"]}),
    ("POST", "/v1/jobs/batch-disable", {"ids": ["x"]}),
    ("GET", "/v1/jobs/{job}", None),
    ("PATCH", "/v1/jobs/{job}", {"name": "n"}),
    ("DELETE", "/v1/jobs/{job}", None),
    ("GET", "/v1/jobs/{job}/versions", None),
    ("GET", "/v1/jobs/{job}/versions/{ver}", None),
    ("POST", "/v1/jobs/{job}/clone", {"name": "c", "slug": "c"}),
    ("GET", "/v1/jobs/{job}/health", None),
    ("GET", "/v1/jobs/{job}/dependencies", None),
    ("POST", "/v1/jobs/{job}/dependencies", {"depends_on_job_id": "up"}),
    ("DELETE", "/v1/jobs/{job}/dependencies/{dep}", None),
]
WRITE_ROUTES = [r for r in ROUTES if r[0] != "GET"]
JOB_ROUTES = [r for r in ROUTES if "{job}" in r[1]]


def _call(client, method, path, body, headers):
    kwargs = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    return client.open(path, method=method, **kwargs)


@pytest.fixture()
def world(client, auth):
    job = create(client, auth, "target")
    create(client, auth, "up")
    edge = client.post("/v1/jobs/target/dependencies", json={"depends_on_job_id": "up"}, headers=auth).json
    client.delete(f"/v1/jobs/target/dependencies/{edge['id']}", headers=auth)
    edge = client.post("/v1/jobs/target/dependencies", json={"depends_on_job_id": "up", "condition": "any"},
                       headers=auth).json
    return {"job": job["id"], "ver": job["version_id"], "dep": edge["id"]}


def _fill(path, world):
    return path.format(**world)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_requires_a_key(client, method, path, body):
    response = _call(client, method, _fill(path, {"job": "x", "ver": "y", "dep": "z"}), body, {})
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    for header in ("Bearer sk_" + "0" * 64, "Basic abc", "Bearer nope"):
        assert_error(_call(client, method, _fill(path, {"job": "x", "ver": "y", "dep": "z"}), body,
                           {"Authorization": header}), 401)


@pytest.mark.parametrize(("method", "path", "body"), JOB_ROUTES)
def test_other_project_gets_404_on_every_job_route(client, other_auth, world, method, path, body):
    assert_error(_call(client, method, _fill(path, world), body, other_auth), 404)
    for ref in ("target", UNKNOWN):
        filled = _fill(path, {**world, "job": ref})
        assert_error(_call(client, method, filled, body, other_auth), 404)


def test_project_id_mismatch_is_403(client, auth, world):
    assert_error(client.get("/v1/jobs?project_id=proj-b", headers=auth), 403)
    assert_error(client.post("/v1/jobs", json=job_body("q", project_id="proj-b"), headers=auth), 403)
    assert_error(client.post("/v1/jobs/batch", json=[job_body("q", project_id="proj-b")], headers=auth), 403)
    assert_error(client.patch("/v1/jobs/target", json={"project_id": "proj-b"}, headers=auth), 403)


@pytest.mark.parametrize(("method", "path", "body"), WRITE_ROUTES)
def test_read_only_key_gets_403_on_writes(client, session_factory, world, method, path, body):
    headers = {"Authorization": f"Bearer {make_key(session_factory, 'proj-a', 'jobs:read')}"}
    assert_error(_call(client, method, _fill(path, world), body, headers), 403, "missing scope jobs:write")


@pytest.mark.parametrize(("method", "path", "body"), [r for r in ROUTES if r[0] == "GET"])
def test_read_routes_need_jobs_read(client, session_factory, world, method, path, body):
    wrong = {"Authorization": f"Bearer {make_key(session_factory, 'proj-a', 'jobs:write,runs:read')}"}
    assert_error(_call(client, method, _fill(path, world), body, wrong), 403, "missing scope jobs:read")
    right = {"Authorization": f"Bearer {make_key(session_factory, 'proj-a', 'jobs:read')}"}
    assert _call(client, method, _fill(path, world), body, right).status_code == 200


def test_precedence_401_before_415_and_413(client):
    response = client.post("/v1/jobs", data="x" * 10, content_type="text/plain")
    assert_error(response, 401)
    assert_error(client.post("/v1/jobs", data=b"x" * (1 << 20 + 1), content_type="application/json"), 401)


def test_precedence_scope_before_413_and_415(client, session_factory):
    headers = {"Authorization": f"Bearer {make_key(session_factory, 'proj-a', 'jobs:read')}"}
    assert_error(client.post("/v1/jobs", data="x", content_type="text/plain", headers=headers), 403)


def test_body_size_type_and_syntax(client, auth):
    big = b'{"name": "' + b"x" * (1 << 20) + b'"}'
    assert_error(client.post("/v1/jobs", data=big, content_type="application/json", headers=auth), 413)
    assert_error(client.post("/v1/jobs", data=big, content_type="text/plain", headers=auth), 413)
    assert_error(client.post("/v1/jobs", data='{"name": "x"}', content_type="text/plain", headers=auth), 415)
    assert_error(client.post("/v1/jobs", data='{"name": "x"}', headers=auth), 415)
    ok = client.post("/v1/jobs", data='{"name":"cs","slug":"cs","endpoint_url":"http://127.0.0.1:9/"}',
                     content_type="application/json; charset=utf-8", headers=auth)
    assert ok.status_code == 201
    assert_error(client.post("/v1/jobs", data="{bad json", content_type="application/json", headers=auth), 400)
    assert_error(client.post("/v1/jobs", data="", content_type="application/json", headers=auth), 400)
    assert_error(client.post("/v1/jobs", data=b"\xff\xfe", content_type="application/json", headers=auth), 400)


def test_root_type_and_nul(client, auth):
    for raw in ("[]", "[1]", '"s"', "5", "true"):
        error = assert_error(client.post("/v1/jobs", data=raw, content_type="application/json", headers=auth), 422)
        assert "_schema" in error["errors"]
    error = assert_error(client.post("/v1/jobs", json=job_body("n", description="a\x00b"), headers=auth), 422)
    assert "description" in error["errors"]
    error = assert_error(client.post("/v1/jobs", json=job_body("n", tags={"k": "\x00"}), headers=auth), 422)
    assert error["errors"] == {"tags": {"k": ["Must not contain the NUL character (U+0000)."]}}


def test_unknown_routes_methods_and_trailing_slashes(client, auth, world):
    assert_error(client.get("/v1/nope", headers=auth), 404)
    assert_error(client.get("/v1/jobs/", headers=auth), 404)
    assert_error(client.get("/v1/jobs/target/", headers=auth), 404)
    assert_error(client.get("/v1/jobs/target/versions/", headers=auth), 404)
    for path in ("/v1/jobs/batch", "/v1/jobs/batch-enable", "/v1/jobs/batch-disable"):
        response = client.get(path, headers=auth)
        assert_error(response, 405)
        assert "POST" in response.headers["Allow"]
        assert_error(client.patch(path, json={}, headers=auth), 405)
        assert_error(client.delete(path, headers=auth), 405)
    response = client.put("/v1/jobs/target", json={}, headers=auth)
    assert_error(response, 405)
    assert {"GET", "PATCH", "DELETE"} <= set(response.headers["Allow"].replace(" ", "").split(","))
    assert_error(client.delete("/v1/jobs", headers=auth), 405)
    assert_error(client.get("/v1/jobs/target/clone", headers=auth), 405)
    # 405 and 404 come before authentication
    assert_error(client.get("/v1/jobs/batch"), 405)
    assert_error(client.get("/v1/nope"), 404)


def test_request_id_is_echoed(client, auth):
    response = client.get("/v1/jobs/missing", headers={**auth, "X-Request-Id": "abc.123:x-y"})
    assert response.headers["X-Request-Id"] == "abc.123:x-y"
    assert response.json["request_id"] == "abc.123:x-y"
    bad = client.get("/v1/jobs/missing", headers={**auth, "X-Request-Id": "has space"})
    assert bad.headers["X-Request-Id"] != "has space"


def test_openapi_documents_every_jobs_route(client):
    paths = client.get("/openapi.json").json["paths"]
    for method, path, _ in ROUTES:
        templ = path.replace("{ver}", "{version_id}").replace("{dep}", "{dep_id}")
        assert method.lower() in paths[templ], (method, templ)


def test_openapi_documents_every_route_of_the_app(app, client):
    """Every served route and method is in /openapi.json (the service routes included), except the
    document itself, its viewer, Flask's static files and the web console's HTML pages."""
    import re

    spec_paths = client.get("/openapi.json").json["paths"]
    documented = {(path, method.upper()) for path, ops in spec_paths.items() for method in ops}
    served = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
              for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}
              if rule.endpoint not in ("static", "api-docs.openapi_json", "api-docs.openapi_swagger_ui")
              and not rule.rule.startswith(("/docs", "/openapi", "/ui"))}
    assert served - documented == set()
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec_paths)
