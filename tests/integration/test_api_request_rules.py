"""The request path's shortcuts keep every rule: the API key read together with the job (GET job,
trigger), the body parser's byte pre-checks for NUL and surrogates, and the job + version insert in one
statement."""

from __future__ import annotations

import json

import sqlalchemy as sa

from shared.apikeys import revoke_key
from shared.clock import utcnow
from shared.db.engine import transaction
from shared.db.models import ApiKey, JobVersion
from tests.conftest import make_key

JOB = {"name": "Fast", "slug": "fast", "endpoint_url": "http://127.0.0.1:9/e"}


def _create(client, auth) -> dict:  # type: ignore[no-untyped-def]
    response = client.post("/v1/jobs", json=JOB, headers=auth)
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def test_create_writes_version_one(client, auth, session_factory) -> None:  # type: ignore[no-untyped-def]
    job = _create(client, auth)
    with session_factory() as s:
        version = s.scalars(sa.select(JobVersion).where(JobVersion.job_id == job["id"])).one()
    assert version.id == job["version_id"] and version.version == 1 and version.config["slug"] == "fast"
    assert client.post("/v1/jobs", json=JOB, headers=auth).status_code == 409  # slug taken, nothing written


def test_revoked_key_is_refused_at_once_on_job_routes(client, auth, session_factory) -> None:  # type: ignore[no-untyped-def]
    job = _create(client, auth)
    key = make_key(session_factory)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers).status_code == 200
    with transaction(session_factory) as s:
        key_id = s.scalars(sa.select(ApiKey.id).where(ApiKey.last_used_at.is_not(None))
                           .order_by(ApiKey.created_at.desc())).first()
        assert key_id is not None  # the combined lookup still records last_used_at
        revoke_key(s, key_id, utcnow())
    for method, path in (("GET", f"/v1/jobs/{job['id']}"), ("GET", "/v1/jobs/fast"),
                         ("POST", f"/v1/jobs/{job['id']}/trigger"), ("GET", "/v1/jobs/missing")):
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 401, (method, path)


def test_job_routes_keep_tenant_isolation_and_precedence(client, auth, other_auth, session_factory) -> None:  # type: ignore[no-untyped-def]
    job = _create(client, auth)
    for ref in (job["id"], "fast"):
        assert client.get(f"/v1/jobs/{ref}", headers=other_auth).status_code == 404
        assert client.post(f"/v1/jobs/{ref}/trigger", headers=other_auth).status_code == 404
        assert client.get(f"/v1/jobs/{ref}", headers=auth).get_json()["id"] == job["id"]
    reader = {"Authorization": f"Bearer {make_key(session_factory, 'proj-a', 'jobs:read')}"}
    assert client.post("/v1/jobs/missing/trigger", headers=reader).status_code == 403  # scope before 404
    bad_key = {"Authorization": "Bearer sk_" + "0" * 64}
    assert client.get("/v1/jobs/missing", headers=bad_key).status_code == 401
    assert client.get("/v1/jobs/" + "x" * 300, headers=auth).status_code == 404
    response = client.post(f"/v1/jobs/{job['id']}/trigger", data=b"{", headers={**auth, "Content-Type":
                                                                               "application/json"})
    assert response.status_code == 400  # body errors still come before the job's checks


def test_nul_and_surrogates_are_refused_in_every_encoding(client, auth) -> None:  # type: ignore[no-untyped-def]
    job = _create(client, auth)
    headers = {**auth, "Content-Type": "application/json"}
    path = f"/v1/jobs/{job['id']}/trigger"
    nul = json.dumps({"payload": {"a": "x\u0000"}})
    for raw in (nul.encode(), nul.encode("utf-16"), nul.encode("utf-32")):
        response = client.post(path, data=raw, headers=headers)
        assert response.status_code == 422, raw[:20]
        assert "payload" in response.get_json()["errors"]
    response = client.post(path, data=b'{"payload": {"a": "\\ud800"}}', headers=headers)
    assert response.status_code == 422
    assert client.post(path, data=b'{"payload": {"a": "\\\\u0000"}}', headers=headers).status_code == 201
