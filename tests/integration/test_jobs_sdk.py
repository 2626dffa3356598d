"""Compatibility: the official Strait Python SDK (strait-python) drives the jobs endpoints of a live server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from strait import Client
from strait._errors import ApiError, ConflictError, NotFoundError, UnauthorizedError

from tests.integration.jobs_support import ENDPOINT, JOB_FIELDS
from tests.integration.process_support import served


@pytest.fixture()
def live_url(app) -> Iterator[str]:
    with served(app) as url:
        yield url


@pytest.fixture()
def sdk(live_url, auth) -> Iterator[Client]:
    key = auth["Authorization"].removeprefix("Bearer ")
    client = Client(base_url=live_url + "/", api_key=key, retry=None)
    yield client
    client.close()


def test_sdk_job_lifecycle(sdk):
    created = sdk.jobs.create({"project_id": "proj-a", "name": "Nightly", "slug": "nightly",
                               "endpoint_url": ENDPOINT, "cron": "0 3 * * *", "tags": {"team": "data"},
                               "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    assert set(created) == JOB_FIELDS and created["version"] == 1 and created["webhook_secret"] == "whsec_…LaSw"
    fetched = sdk.jobs.get(created["id"])
    assert fetched == created
    assert sdk.jobs.get("nightly")["id"] == created["id"]

    listed = sdk.jobs.list(query={"project_id": "proj-a", "limit": "10"})
    assert isinstance(listed, list) and [j["id"] for j in listed] == [created["id"]]

    # read-modify-write: the SDK sends the whole object back, masked secret and read-only fields included
    body = dict(fetched)
    body["description"] = "runs at three"
    updated = sdk.jobs.update(created["id"], body)
    assert updated["description"] == "runs at three" and updated["version"] == 2
    assert updated["webhook_secret"] == "whsec_…LaSw"
    assert sdk.jobs.update(created["id"], {"name": "Nightly"})["version"] == 2  # no-op

    versions = sdk.jobs.list_versions(created["id"])
    assert [v["version"] for v in versions] == [2, 1]
    assert sdk.jobs.get_version(created["id"], created["version_id"])["description"] is None

    clone = sdk.jobs.clone(created["id"], {"name": "Copy", "slug": "copy"})
    assert clone["cron"] == "0 3 * * *" and clone["version"] == 1

    edge = sdk.jobs.create_dependency(clone["id"], {"depends_on_job_id": created["id"]})
    assert edge["depends_on_job_id"] == created["id"]
    assert [e["id"] for e in sdk.jobs.list_dependencies(clone["id"])] == [edge["id"]]
    assert sdk.jobs.delete_dependency(clone["id"], edge["id"]) == {}

    health = sdk.jobs.get_health(created["id"])
    assert health["total_runs"] == 0 and health["health_score"] == -1

    batch = sdk.jobs.batch({"jobs": [{"name": "B1", "slug": "b1", "endpoint_url": ENDPOINT}]})
    assert [j["slug"] for j in batch] == ["b1"]
    assert sdk.jobs.batch_disable({"ids": ["b1", clone["id"]]}) == {"updated": 2}
    assert sdk.jobs.batch_enable({"job_ids": ["b1"]}) == {"updated": 1}

    assert sdk.jobs.delete(created["id"]) == {}
    with pytest.raises(NotFoundError):
        sdk.jobs.get(created["id"])


def test_sdk_sees_error_messages(sdk, live_url):
    sdk.jobs.create({"name": "A", "slug": "a", "endpoint_url": ENDPOINT})
    with pytest.raises(ConflictError) as conflict:
        sdk.jobs.create({"name": "A", "slug": "a", "endpoint_url": ENDPOINT})
    assert str(conflict.value) == 'slug "a" already exists in this project'
    with pytest.raises(ApiError) as invalid:
        sdk.jobs.create({"name": "A", "slug": "b", "endpoint_url": ENDPOINT, "cron": "61 * * * *"})
    assert invalid.value.status == 400 and str(invalid.value) == 'cron: invalid expression "61 * * * *"'
    with pytest.raises(ApiError) as unprocessable:
        sdk.jobs.create({"name": "A", "slug": "B", "endpoint_url": ENDPOINT})
    assert unprocessable.value.status == 422 and "slug" in unprocessable.value.body["errors"]
    with pytest.raises(UnauthorizedError):
        Client(base_url=live_url, api_key="sk_" + "0" * 64, retry=None).jobs.get("a")
