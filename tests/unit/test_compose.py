"""deploy/compose.yaml, the single-host file, checked against the Compose Specification's JSON schema
(vendored: tests/schemas/compose-spec.json) and for the order it promises: the migration runs once and
succeeds before the API, workers and scheduler start; each of them has a health check."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
SLUICE_SERVICES = {"api": 8080, "worker": 9101, "scheduler": 9102}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]  # merge keys resolved


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_follows_the_compose_specification() -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(compose())]
    assert errors == []


def test_the_schema_check_is_not_vacuous() -> None:
    misspelt = copy.deepcopy(compose())
    misspelt["services"]["api"]["helthcheck"] = {}
    assert list(validator().iter_errors(misspelt))
    unknown_condition = compose()
    unknown_condition["services"]["worker"]["depends_on"] = {"migrate": {"condition": "service_finished"}}
    assert list(validator().iter_errors(unknown_condition))


def test_services_and_start_order() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", *SLUICE_SERVICES}
    migrate = services["migrate"]
    assert migrate["command"] == ["sluice", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    images = {(services[name]["image"], services[name]["build"]["dockerfile"])
              for name in ("migrate", *SLUICE_SERVICES)}
    assert images == {("${SLUICE_IMAGE:-sluice:local}", "deploy/Dockerfile")}  # one image for every process
    for name, port in SLUICE_SERVICES.items():
        service = services[name]
        assert service["command"] == ["sluice", name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert f"127.0.0.1:{port}/" in " ".join(service["healthcheck"]["test"])
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
        assert service["environment"]["SLUICE_API_METRICS_PORT"] == "9100"


def test_worker_stop_grace_covers_the_default_attempt_timeout() -> None:
    grace = compose()["services"]["worker"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match and int(match.group(1)) >= 330
