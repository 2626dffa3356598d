"""What /openapi.json and /docs tell a user: every operation has a unique operationId; no summary or
description cites the design documents or describes the implementation; every request body has an
example, and each example is accepted by the API as it stands; /docs loads Swagger UI from the API
itself, never from a CDN."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

FORBIDDEN = re.compile(
    r"§|CONTRACT|contract section|``|\bTODO\b|autocommit|\bstatement\b|\bSQL\b|front layer|partial index"
    r"|prepared|\bindex scan\b|api\.front|shared\.|\bworker\.|\bapi\.[a-z_]+\b",
    re.I,
)
METHODS = {"get", "post", "put", "patch", "delete"}


def texts(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"summary", "description", "title"} and isinstance(value, str):
                yield f"{path}/{key}", value
            elif key != "example":
                yield from texts(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from texts(value, f"{path}[{index}]")


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


@pytest.fixture()
def spec(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_every_operation_has_a_unique_operation_id_and_a_summary(spec: dict[str, Any]) -> None:
    ids = [op.get("operationId") for _, _, op in operations(spec)]
    assert all(ids) and len(ids) == len(set(ids)), ids
    assert all(re.fullmatch(r"[a-z][A-Za-z]+", i) for i in ids), ids
    assert all(op.get("summary") for _, _, op in operations(spec))


def test_no_text_cites_design_documents_or_implementation(spec: dict[str, Any]) -> None:
    found = [(where, text) for where, text in texts(spec) if FORBIDDEN.search(text)]
    assert found == []
    assert "Bearer" in spec["info"]["description"]


def test_the_text_check_is_not_vacuous() -> None:
    assert FORBIDDEN.search("Validated as in CONTRACT §3.2")
    assert FORBIDDEN.search("Autocommit: the job and its version are one statement")


def _body_schema(spec: dict[str, Any], operation: dict[str, Any]) -> str | None:
    body = operation.get("requestBody")
    if not body:
        return None
    schema = body["content"]["application/json"]["schema"]
    ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def test_every_request_body_has_an_example(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    missing = []
    for method, path, operation in operations(spec):
        name = _body_schema(spec, operation)
        if name is not None and "example" not in schemas[name]:
            missing.append((method, path, name))
    assert missing == []
    assert "example" in schemas["Error"]


def test_the_examples_are_accepted_by_the_api(client, auth, spec: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    examples = {name: schema["example"] for name, schema in spec["components"]["schemas"].items()
                if "example" in schema}

    def call(method: str, url: str, body: Any, expected: int) -> Any:
        response = client.open(url, method=method, json=body, headers=auth)
        assert response.status_code == expected, (url, response.get_json())
        return response.get_json()

    call("POST", "/v1/jobs", {"name": "Import users", "slug": "import-users",
                              "endpoint_url": "https://example.com/hooks/import"}, 201)
    call("POST", "/v1/jobs", examples["JobCreate"], 201)
    slug = examples["JobCreate"]["slug"]
    call("PATCH", f"/v1/jobs/{slug}", examples["JobPatch"], 200)
    call("POST", f"/v1/jobs/{slug}/clone", examples["JobClone"], 201)
    call("POST", f"/v1/jobs/{slug}/dependencies", examples["DependencyCreate"], 201)
    call("POST", "/v1/jobs/batch-disable", examples["JobBatchToggle"], 200)
    call("POST", "/v1/jobs/batch-enable", examples["JobBatchToggle"], 200)
    run = call("POST", f"/v1/jobs/{slug}/trigger", examples["Trigger"], 201)
    call("POST", f"/v1/jobs/{slug}/trigger/bulk", examples["BulkTrigger"], 201)
    call("POST", "/v1/runs/bulk-cancel", {**examples["RunIds"], "run_ids": [run["id"]]}, 200)
    error = call("PATCH", f"/v1/jobs/{slug}", {"timeout_secs": 0}, 422)
    assert set(error) == set(examples["Error"])
    assert error["errors"] == examples["Error"]["errors"]


def test_docs_page_loads_swagger_ui_from_the_api(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    assert "http://" not in html and "https://" not in html
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.data) > 10_000, source
    assert client.get("/docs/assets/app.py").status_code == 404


def test_keyless_routes_and_optional_bodies_are_documented_so(client, spec: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """A client generated from the document sends no key to the service routes and may trigger without a
    body, as the API allows."""
    for path in ("/healthz", "/readyz", "/metrics"):
        assert spec["paths"][path]["get"]["security"] == []
        assert client.get(path).status_code in (200, 503)
    assert spec["security"] == [{"bearerAuth": []}]  # the rest need a key
    assert spec["paths"]["/v1/jobs/{job}/trigger"]["post"]["requestBody"]["required"] is False
