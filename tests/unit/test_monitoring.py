"""deploy/monitoring: the alert rules pass ``promtool check rules`` and the unit tests of
tests/monitoring/alerts_test.yaml (each alert fires on its symptom, none on a healthy installation); every
dashboard query is valid PromQL; both use only metric families Sluice exposes; the operator's guide lists
every alert. promtool is required: without it these tests fail (``.ci/run`` installs Debian's
``prometheus`` package, which ships it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Histogram

import scheduler.metrics
import shared.metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yaml"
ALERT_TESTS = ROOT / "tests" / "monitoring" / "alerts_test.yaml"
DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
OPERATORS_GUIDE = ROOT / "deploy" / "README.md"
METRIC_NAME = re.compile(r"\bsluice_[a-z_]+\b")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian: apt-get install prometheus); .ci/run installs it"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def exposed_series() -> set[str]:
    names = set()
    for module in (shared.metrics, scheduler.metrics):
        for value in vars(module).values():
            if isinstance(value, Counter):
                names.add(value._name + "_total")  # prometheus_client strips the suffix
            elif isinstance(value, Histogram):
                names |= {value._name + suffix for suffix in ("_bucket", "_count", "_sum")}
            elif isinstance(value, shared.metrics.GaugeSpec):
                names.add(value.name)
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_listed_in_the_operators_guide() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names == fired
    guide = OPERATORS_GUIDE.read_text()
    assert not [name for name in names if f"`{name}`" not in guide]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"sluice:dashboard_query:{index}", "expr": expr.replace("$__rate_interval", "5m")}
        for index, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_promql_check_is_not_vacuous(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    broken = {"record": "x:y", "expr": "sum(rate(a[5m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [broken]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        xs, ys = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in xs for y in ys}
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        cells |= area
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_only_exposed_metrics_are_used(source: str) -> None:
    text = ALERTS.read_text() if source == "alerts" else "\n".join(dashboard_exprs())
    used = set(METRIC_NAME.findall(text))
    assert used
    assert not used - exposed_series(), sorted(used - exposed_series())
