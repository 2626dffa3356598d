"""Offline checks of the Kubernetes files in deploy/k8s: the base and both overlays are rendered with
``kubectl kustomize`` and every object is validated (built-in kinds strictly against Kubernetes 1.30's
schemas, KEDA and Prometheus Operator kinds against their CRD schemas), then the properties an operator
relies on are checked on what would be applied. No cluster and no network are needed.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.messages.layout import DISPATCH_QUEUE
from tests.deploy_support import K8S, K8S_VERSION, custom_problems, render, validation_problems

BASE = K8S / "base"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
KUSTOMIZATIONS = {"base": BASE, **OVERLAYS}
SECRET_EXAMPLE = "secret.example.yaml"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
PORTS = {"api": 8080, "api-metrics": 9100, "worker": 9101, "scheduler": 9102}
DEFAULT_ATTEMPT_TIMEOUT_SECS = 300
METADATA_ADDRESS = ipaddress.ip_address("169.254.169.254")
CLUSTER_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8"]

_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(name: str) -> list[dict[str, Any]]:
    if name not in _rendered:
        _rendered[name] = render(KUSTOMIZATIONS[name])
    return _rendered[name]


def sluice_objects(name: str) -> list[dict[str, Any]]:
    return [o for o in rendered(name) if o["metadata"].get("labels", {}).get(NAME_LABEL) == "sluice"]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return one(objects, "Deployment", f"sluice-{component}")


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (main,) = workload["spec"]["template"]["spec"]["containers"]
    return main  # type: ignore[no-any-return]


def port_of(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    assert port in named, f"{c['name']}: no container port named {port!r}"
    return named[port]  # type: ignore[no-any-return]


def probe(c: dict[str, Any], kind: str) -> tuple[str, int]:
    http_get = c[kind]["httpGet"]
    return http_get["path"], port_of(c, http_get["port"])


# --- the files and their rendering ----------------------------------------------------------------------


def test_base_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml", SECRET_EXAMPLE}
    assert sorted(kustomization["resources"]) == sorted(files)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_rendered_object_validates(name: str) -> None:
    objects = rendered(name)
    assert objects
    assert validation_problems(objects) == []
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))


def test_the_secret_template_validates() -> None:
    (secret,) = [d for d in yaml.safe_load_all((BASE / SECRET_EXAMPLE).read_text()) if d]
    assert validation_problems([secret]) == []
    assert set(secret["stringData"]) == {"DATABASE_URL", "REDIS_URL", "REDIS_ADDRESS", "REDIS_PASSWORD",
                                         "SLUICE_SECRET_KEY"}


def test_the_validators_reject_broken_objects() -> None:
    """Guard against vacuous validation: a misspelt field and a wrongly typed CRD field are caught."""
    api = copy.deepcopy(deployment(rendered("base"), "api"))
    container(api)["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)
    scaled = copy.deepcopy(one(rendered("base"), "ScaledObject", "sluice-worker"))
    scaled["spec"]["minReplicaCount"] = "two"
    monitor = copy.deepcopy(one(rendered("base"), "PodMonitor", "sluice-worker"))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = 15
    assert len(custom_problems([scaled, monitor])) == 2


def test_overlays_set_their_namespace_and_the_dev_one_needs_no_add_ons() -> None:
    for name, namespace in (("dev", "sluice-dev"), ("prod", "sluice")):
        for obj in rendered(name):
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == namespace, (name, obj["kind"], obj["metadata"]["name"])
    assert not [o for o in rendered("dev") if "keda.sh" in o["apiVersion"] or "coreos" in o["apiVersion"]]
    secret = one(rendered("dev"), "Secret", "sluice-secrets")
    assert "@sluice-dev-postgres:5432/" in base64.b64decode(secret["data"]["DATABASE_URL"]).decode()
    assert not [o for o in rendered("prod") if o["kind"] == "Secret"], "production secrets are never in the repo"
    images = {c["image"] for o in sluice_objects("prod") if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"] + o["spec"]["template"]["spec"]["initContainers"]}
    assert images == {"registry.example.com/sluice:0.1.0"}


# --- every process: migrations first, probes, hardening ------------------------------------------------


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
@pytest.mark.parametrize("component", ["api", "worker", "scheduler"])
def test_each_process_migrates_first_and_has_probes(name: str, component: str) -> None:
    objects = rendered(name)
    workload = deployment(objects, component)
    spec = workload["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"] == ["sluice", "db", "upgrade"]  # finishes before the pod's container starts
    main = container(workload)
    assert probe(main, "livenessProbe") == probe(main, "startupProbe")
    if component == "api":
        assert "command" not in main and "args" not in main  # the image's CMD: `sluice api`
        assert probe(main, "livenessProbe") == ("/healthz", PORTS["api"])
        assert probe(main, "readinessProbe") == ("/readyz", PORTS["api"])
    else:
        assert main["command"] == ["sluice", component]
        assert probe(main, "livenessProbe") == ("/healthz", PORTS[component])
    config = one(objects, "ConfigMap", "sluice-config")["data"]
    for c in (init, main):
        assert {"configMapRef": {"name": "sluice-config"}} in c["envFrom"]
        assert {"secretRef": {"name": "sluice-secrets"}} in c["envFrom"]
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert {"/tmp"} <= {m["mountPath"] for m in c["volumeMounts"]}
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][bound]), (c["name"], bound)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert "SLUICE_METRICS_PORT" not in config  # each role keeps its own default port


# --- metrics ---------------------------------------------------------------------------------------------


def test_api_metrics_are_on_their_own_port_and_not_public() -> None:
    objects = rendered("base")
    config = one(objects, "ConfigMap", "sluice-config")["data"]
    assert int(config["SLUICE_API_METRICS_PORT"]) == PORTS["api-metrics"]
    api = container(deployment(objects, "api"))
    assert port_of(api, "metrics") == PORTS["api-metrics"]
    public = one(objects, "Service", "sluice-api")
    assert [port_of(api, p["targetPort"]) for p in public["spec"]["ports"]] == [PORTS["api"]]
    metrics_service = one(objects, "Service", "sluice-api-metrics")
    (port,) = metrics_service["spec"]["ports"]
    assert port_of(api, port["targetPort"]) == PORTS["api-metrics"]
    monitor = one(objects, "ServiceMonitor", "sluice-api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= public["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]


@pytest.mark.parametrize("component", ["worker", "scheduler"])
def test_pod_monitors_scrape_worker_and_scheduler(component: str) -> None:
    objects = rendered("base")
    workload = deployment(objects, component)
    monitor = one(objects, "PodMonitor", f"sluice-{component}")
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["path"], port_of(container(workload), endpoint["port"])) == ("/metrics", PORTS[component])


# --- workers: autoscaling, disruptions -------------------------------------------------------------------


def test_keda_scales_workers_on_the_runs_queue() -> None:
    objects = rendered("base")
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"], "KEDA owns the worker HPA"
    worker = deployment(objects, "worker")
    assert "replicas" not in worker["spec"]
    scaled = one(objects, "ScaledObject", "sluice-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == f"dramatiq:{DISPATCH_QUEUE}"
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {"sluice-secrets"}
    assert scaled["spec"]["minReplicaCount"] >= 1


@pytest.mark.parametrize(("name", "grace"), [("base", DEFAULT_ATTEMPT_TIMEOUT_SECS + 30), ("prod", 3630)])
def test_worker_disruption_budget_and_grace(name: str, grace: int) -> None:
    objects = rendered(name)
    worker = deployment(objects, "worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace
    pdb = one(objects, "PodDisruptionBudget", "sluice-worker")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_scheduler_is_a_single_recreated_replica() -> None:
    scheduler = deployment(rendered("base"), "scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}


# --- egress ------------------------------------------------------------------------------------------------


def _egress_rules(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"
                and o["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
    assert policies and all("Egress" in p["spec"]["policyTypes"] for p in policies)
    return [rule for p in policies for rule in p["spec"].get("egress", [])]


def _allows(rule: dict[str, Any], address: ipaddress.IPv4Address, port: int) -> bool:
    if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
        return False
    peers = rule.get("to")
    if not peers:
        return True
    for peer in peers:
        block = peer.get("ipBlock")
        if block is None:
            continue  # pod/namespace selectors: in-cluster peers on the listed ports only
        if address in ipaddress.ip_network(block["cidr"]) and not any(
                address in ipaddress.ip_network(e) for e in block.get("except", []) if ":" not in e):
            return True
    return False


@pytest.mark.parametrize("component", ["api", "worker", "scheduler"])
def test_egress_refuses_the_metadata_address_and_cluster_ranges(component: str) -> None:
    objects = rendered("base")
    labels = deployment(objects, component)["spec"]["template"]["metadata"]["labels"]
    rules = _egress_rules(objects, labels)
    for port in (80, 443, 8080):
        assert not any(_allows(r, METADATA_ADDRESS, port) for r in rules)
        for cidr in CLUSTER_RANGES:
            first = next(ipaddress.ip_network(cidr).hosts())
            assert not any(_allows(r, first, port) for r in rules), (cidr, port)
    public = ipaddress.ip_address("203.0.113.10")
    assert any(_allows(r, public, 443) for r in rules) == (component == "worker")  # only workers call out
    assert any(_allows(r, ipaddress.ip_address("10.1.2.3"), 5432) for r in rules)  # the database stays reachable
