"""Offline checks of the container image recipe and the Kubernetes base in deploy/k8s.

Every YAML document is validated with ``kubernetes-validate`` (bundled JSON schemas, strict mode: unknown
fields are errors) against ``K8S_VERSION``; no cluster and no network are needed. ``kustomization.yaml`` is
a kustomize config, not a Kubernetes object, so it is checked structurally instead. ``secret.example.yaml``
is a template deliberately kept out of the kustomization's ``resources`` (applying it would overwrite the
real Secret with placeholders) but is still schema-validated.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

K8S_VERSION = "1.30.0"
KUSTOMIZATION = "kustomization.yaml"
SECRET_EXAMPLE = "secret.example.yaml"
NOT_RESOURCES = {KUSTOMIZATION, SECRET_EXAMPLE}

IMAGE = "sluice:latest"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENTS = {"api", "worker", "scheduler", "migrate"}
API_PORT = 8080
DEFAULT_ATTEMPT_TIMEOUT_SECS = 300
WORKLOAD_KINDS = {"Deployment", "Job"}


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.iterdir() if p.suffix in {".yaml", ".yml"})


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _documents() -> list[tuple[str, int, dict[str, Any]]]:
    return [
        (path.name, index, doc)
        for path in _manifest_files()
        if path.name != KUSTOMIZATION
        for index, doc in enumerate(_load(path))
    ]


DOCUMENTS = _documents()
OBJECTS = [doc for _name, _index, doc in DOCUMENTS]
RESOURCE_OBJECTS = [doc for name, _index, doc in DOCUMENTS if name != SECRET_EXAMPLE]


def _one(kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in OBJECTS
        if o["kind"] == kind
        and (component is None or o["metadata"]["labels"].get(COMPONENT_LABEL) == component)
    ]
    assert len(found) == 1, f"expected exactly one {kind} {component or ''}, found {len(found)}"
    return found[0]


def _workloads() -> list[dict[str, Any]]:
    return [o for o in OBJECTS if o["kind"] in WORKLOAD_KINDS]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(workload)
    return spec["containers"] + spec.get("initContainers", [])


def _workload_id(workload: dict[str, Any]) -> str:
    return f"{workload['kind']}/{workload['metadata']['name']}"


# --- inventory -----------------------------------------------------------------------------------------


def test_manifest_directory_is_not_empty() -> None:
    names = {p.name for p in _manifest_files()}
    for required in (
        "kustomization.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "api.yaml",
        "worker.yaml",
        "scheduler.yaml",
        "migrate-job.yaml",
    ):
        assert required in names


def test_kustomization_resources_list_exactly_the_manifest_files() -> None:
    kustomization = yaml.safe_load((K8S_DIR / KUSTOMIZATION).read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "duplicate entries in resources"
    expected = {p.name for p in _manifest_files()} - NOT_RESOURCES
    assert set(resources) == expected
    assert SECRET_EXAMPLE not in resources, "the placeholder Secret must never be applied by kustomize"


def test_kustomization_images_retag_the_common_image() -> None:
    kustomization = yaml.safe_load((K8S_DIR / KUSTOMIZATION).read_text())
    names = {entry["name"] for entry in kustomization.get("images", [])}
    assert IMAGE.split(":")[0] in names


# --- schema validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "index", "doc"),
    DOCUMENTS,
    ids=[f"{name}[{index}]-{doc.get('kind')}" for name, index, doc in DOCUMENTS],
)
def test_document_validates_strictly(filename: str, index: int, doc: dict[str, Any]) -> None:
    # Raises ValidationError on a schema violation and SchemaNotFoundError for an unknown kind/apiVersion;
    # either fails the test.
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{filename}[{index}] {doc['kind']}: {path}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{filename}[{index}]: {exc.message}")


def test_strict_validation_catches_unknown_fields() -> None:
    """Guard against a vacuous validator: a misspelt field must be rejected."""
    deployment = json.loads(json.dumps(_one("Deployment", "api")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {
        "httpGet": {"path": "/healthz"}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_object_has_unique_kind_and_name() -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in OBJECTS]
    assert len(keys) == len(set(keys))


# --- labels and pod hygiene ----------------------------------------------------------------------------


@pytest.mark.parametrize("obj", OBJECTS, ids=[f"{o['kind']}/{o['metadata']['name']}" for o in OBJECTS])
def test_objects_carry_the_standard_labels(obj: dict[str, Any]) -> None:
    labels = obj["metadata"].get("labels", {})
    assert labels.get(NAME_LABEL) == "sluice"
    if obj["kind"] not in {"ConfigMap", "Secret"}:
        assert labels.get(COMPONENT_LABEL) in COMPONENTS


@pytest.mark.parametrize("workload", _workloads(), ids=_workload_id)
def test_workload_pods_are_labelled_and_selected(workload: dict[str, Any]) -> None:
    component = workload["metadata"]["labels"][COMPONENT_LABEL]
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[NAME_LABEL] == "sluice"
    assert pod_labels[COMPONENT_LABEL] == component
    if workload["kind"] == "Deployment":
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector == {NAME_LABEL: "sluice", COMPONENT_LABEL: component}
        assert selector.items() <= pod_labels.items()


@pytest.mark.parametrize("workload", _workloads(), ids=_workload_id)
def test_containers_share_image_config_and_hardening(workload: dict[str, Any]) -> None:
    config_map = _one("ConfigMap")["metadata"]["name"]
    secret = _one("Secret")["metadata"]["name"]
    pod_security = _pod_spec(workload).get("securityContext", {})
    for container in _containers(workload):
        name = container["name"]
        assert container["image"] == IMAGE, name
        env_from = container.get("envFrom", [])
        assert {"configMapRef": {"name": config_map}} in env_from, name
        assert {"secretRef": {"name": secret}} in env_from, name
        security = container.get("securityContext", {})
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, name
        assert security.get("readOnlyRootFilesystem") is True, name
        assert security.get("allowPrivilegeEscalation") is False, name
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{name}: {bound}"


@pytest.mark.parametrize("workload", _workloads(), ids=_workload_id)
def test_writable_tmp_for_read_only_root(workload: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in _pod_spec(workload).get("volumes", [])}
    for container in _containers(workload):
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, container["name"]
        assert "emptyDir" in volumes[mounts["/tmp"]]


# --- API -----------------------------------------------------------------------------------------------


def _http_probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    probes = {}
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(kind)
        if probe is not None:
            assert "httpGet" in probe, f"{container['name']}: {kind} should be an HTTP probe"
            probes[kind] = probe["httpGet"]
    return probes


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"{container['name']}: unknown named port {port!r}"
    return named[port]


@pytest.mark.parametrize(
    "deployment",
    [o for o in OBJECTS if o["kind"] == "Deployment"],
    ids=_workload_id,
)
def test_deployment_probes_point_at_health_endpoints(deployment: dict[str, Any]) -> None:
    expected_path = {"livenessProbe": "/healthz", "startupProbe": "/healthz", "readinessProbe": "/readyz"}
    for container in _containers(deployment):
        for kind, http_get in _http_probes(container).items():
            assert http_get["path"] == expected_path[kind], f"{container['name']}: {kind}"
            assert _resolve_port(container, http_get["port"]) == API_PORT


def test_api_deployment() -> None:
    api = _one("Deployment", "api")
    assert api["spec"]["replicas"] == 2
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert API_PORT in [p["containerPort"] for p in container["ports"]]
    probes = _http_probes(container)
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    # No command override: the image's CMD (gunicorn ... api.wsgi:app) serves the API.
    assert "command" not in container
    assert "args" not in container


def test_api_service_maps_80_to_8080() -> None:
    api = _one("Deployment", "api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    service = _one("Service", "api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert _resolve_port(container, port["targetPort"]) == API_PORT


def test_api_disruption_budget_selects_api_pods() -> None:
    pdbs = [o for o in OBJECTS if o["kind"] == "PodDisruptionBudget"]
    api_labels = _one("Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    for pdb in pdbs:
        assert pdb["spec"]["selector"]["matchLabels"].items() <= api_labels.items()
        assert pdb["spec"].get("minAvailable", 0) < _one("Deployment", "api")["spec"]["replicas"]


# --- scheduler, worker, migrations ---------------------------------------------------------------------


def test_scheduler_is_a_single_recreated_replica() -> None:
    scheduler = _one("Deployment", "scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"]["type"] == "Recreate"
    assert "rollingUpdate" not in scheduler["spec"]["strategy"]
    assert _containers(scheduler)[0]["command"] == ["sluice", "scheduler"]
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in OBJECTS if o["kind"] == "HorizontalPodAutoscaler"}
    assert scheduler["metadata"]["name"] not in scaled


def test_worker_grace_period_covers_the_default_attempt_timeout() -> None:
    worker = _one("Deployment", "worker")
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= DEFAULT_ATTEMPT_TIMEOUT_SECS + 30
    assert _containers(worker)[0]["command"] == ["sluice", "worker"]


def test_worker_autoscaler() -> None:
    worker = _one("Deployment", "worker")
    hpa = _one("HorizontalPodAutoscaler", "worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        worker["metadata"]["name"],
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # The HPA owns the replica count; a fixed count would be reset on every apply.
    assert "replicas" not in worker["spec"]


def test_migrate_job() -> None:
    job = _one("Job", "migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}
    assert isinstance(job["spec"]["backoffLimit"], int)
    assert isinstance(job["spec"]["ttlSecondsAfterFinished"], int)
    assert _containers(job)[0]["command"] == ["sluice", "db", "upgrade"]


def test_configmap_holds_no_secrets() -> None:
    data = _one("ConfigMap")["data"]
    assert all(isinstance(v, str) for v in data.values())
    assert not {"DATABASE_URL", "REDIS_URL", "SLUICE_SECRET_KEY"} & set(data)
    secret = _one("Secret")
    assert set(secret["stringData"]) == {"DATABASE_URL", "REDIS_URL", "SLUICE_SECRET_KEY"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build_renders_valid_objects() -> None:
    """Optional: when kubectl is available, render the base offline and validate the output."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in RESOURCE_OBJECTS
    )
    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- image -----------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _single(keyword: str) -> str:
    values = [rest for kw, rest in _dockerfile_instructions() if kw == keyword]
    assert values, f"no {keyword} in Dockerfile"
    return values[-1]


def test_dockerfile_cmd_runs_gunicorn_in_exec_form() -> None:
    cmd = json.loads(_single("CMD"))  # exec (JSON) form, so signals reach the process
    assert cmd[0] == "gunicorn"
    assert "api.wsgi:app" in cmd
    assert "0.0.0.0:8080" in cmd
    assert "--graceful-timeout" in cmd
    assert cmd[cmd.index("--access-logfile") + 1] == "-"
    entrypoint = json.loads(_single("ENTRYPOINT"))
    assert "tini" in entrypoint[0]


def test_dockerfile_base_user_and_port() -> None:
    instructions = _dockerfile_instructions()
    assert _single("FROM").startswith("python:3.11-slim")
    user = _single("USER").split(":")[0]
    assert user not in {"root", "0"}
    assert _single("EXPOSE") == "8080"
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "pip install --no-cache-dir ." in runs


def test_dockerignore_excludes_local_state() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "*.db", ".pytest_cache"} <= patterns
