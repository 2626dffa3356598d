"""Shared helpers of the checks of deploy/: rendering the kustomizations with ``kubectl kustomize`` and
validating objects, built-in kinds with ``kubernetes-validate`` (strict: unknown fields are errors) and the
KEDA and Prometheus Operator kinds with the CRD schemas of @kubernetes-models (tests/crds, run by Node.js).

Both tools are required: in CI (``CI`` set) a missing one fails the test, locally it skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CRDS = ROOT / "tests" / "crds"
K8S_VERSION = "1.30.0"
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def require(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        message = f"{tool} is not installed ({hint})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def render(kustomization: Path) -> list[dict[str, Any]]:
    require("kubectl", ".ci/run installs it")
    result = subprocess.run(["kubectl", "kustomize", str(kustomization)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def is_custom(obj: dict[str, Any]) -> bool:
    return str(obj["apiVersion"]).startswith(CRD_GROUPS)


def validation_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Every schema problem of ``objects``; empty when all are valid."""
    problems = []
    for obj in objects:
        if is_custom(obj):
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    custom = [obj for obj in objects if is_custom(obj)]
    if custom:
        problems += [f"{p['object']}: {p['error']}" for p in custom_problems(custom)]
    return problems


def custom_problems(objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    require("node", ".ci/run installs it")
    if not (CRDS / "node_modules").is_dir():
        message = "tests/crds/node_modules is missing: run `npm ci --prefix tests/crds` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(["node", str(CRDS / "validate.mjs")], input=json.dumps(objects), capture_output=True,
                            text=True, timeout=120, check=False, cwd=CRDS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]
