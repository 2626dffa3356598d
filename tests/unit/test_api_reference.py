"""docs/api.md is the API reference generated from /openapi.json (``python docs/api_reference.py``):
it must match what the current API would generate, and name every operation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "api_reference", Path(__file__).resolve().parents[2] / "docs" / "api_reference.py")
assert _spec is not None and _spec.loader is not None
_generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_generator)
OUTPUT, main, openapi, render = _generator.OUTPUT, _generator.main, _generator.openapi, _generator.render


def test_docs_api_md_is_up_to_date() -> None:
    assert OUTPUT.read_text() == render(openapi()), "docs/api.md is out of date: run python docs/api_reference.py"
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
