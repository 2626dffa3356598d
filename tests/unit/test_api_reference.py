"""docs/api.md is the API reference generated from /openapi.json (``python -m tools.api_reference``):
it must match what the current API would generate, and name every operation."""

from __future__ import annotations

from tools.api_reference import OUTPUT, main, openapi, render


def test_docs_api_md_is_up_to_date() -> None:
    assert OUTPUT.read_text() == render(openapi()), "docs/api.md is out of date: run python -m tools.api_reference"
    assert main(["--check"]) == 0


def test_every_operation_and_schema_is_in_the_reference() -> None:
    spec = openapi()
    text = OUTPUT.read_text()
    for item in spec["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "operationId" in operation:
                assert f"operationId `{operation['operationId']}`" in text
    for name in spec["components"]["schemas"]:
        assert name == "PaginationMetadata" or f"### {name}\n" in text
