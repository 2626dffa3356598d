"""docs/operations.md tells operators where each series is served, and says it right: a series recorded
only by worker code is on the worker's port, and so on; one recorded by shared code (any process) names
every endpoint that serves it and says to sum them."""

from __future__ import annotations

import ast
import functools
import importlib
import re
from pathlib import Path

from prometheus_client import Counter, Histogram

ROOT = Path(__file__).resolve().parents[2]
DEFINED_IN = {"shared/metrics.py": "shared.metrics", "scheduler/metrics.py": "scheduler.metrics"}
PROCESS_OF_PACKAGE = {"api": "api", "worker": "worker", "scheduler": "scheduler"}
ENDPOINT_WORDS = {"api": "API `/metrics`", "worker": "worker `:9101`", "scheduler": "scheduler `:9102`"}


def _families() -> dict[str, tuple[str, str]]:
    """Exposed name → (defining module path, constant name) of every event metric family."""
    found = {}
    for path, module_name in DEFINED_IN.items():
        for constant, value in vars(importlib.import_module(module_name)).items():
            if isinstance(value, Counter | Histogram):
                exposed = value.describe()[0].name + ("_total" if isinstance(value, Counter) else "")
                found[exposed] = (path, constant)
    return found


def _helpers(path: str, constant: str) -> set[str]:
    """The constant and the functions of its module that record into it (``observe_attempt``)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = {constant}
    changed = True
    while changed:  # helpers calling helpers (observe_runs_created_by → observe_runs_created)
        changed = False
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name not in names:
                used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if used & names:
                    names.add(node.name)
                    changed = True
    return names


@functools.cache
def _names_used() -> dict[str, frozenset[str]]:
    """Per module outside the definitions: the names it uses or imports."""
    used = {}
    for package in ("api", "worker", "scheduler", "shared"):
        for path in (ROOT / package).rglob("*.py"):
            relative = str(path.relative_to(ROOT))
            if relative not in DEFINED_IN:
                nodes = list(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
                used[relative] = frozenset({n.id for n in nodes if isinstance(n, ast.Name)}
                                           | {n.name for n in nodes if isinstance(n, ast.alias)})
    return used


def _recorders(names: set[str]) -> set[str]:
    """Top-level packages of the modules (outside the definitions) that use any of ``names``."""
    return {relative.split("/")[0] for relative, used in _names_used().items() if used & names}


def _served_on() -> dict[str, str]:
    """Event-metric table of docs/operations.md: exposed name → its "Served on" cell."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("### Event metrics"):text.index("### Scrape-time gauges")]
    header, *rows = [line for line in section.splitlines() if line.startswith("|")]
    column = [cell.strip() for cell in header.strip("|").split("|")].index("Served on")
    served = {}
    for row in rows[1:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
        served[cells[0].strip("`")] = cells[column]
    return served


def test_every_event_series_says_which_endpoint_serves_it() -> None:
    families, served = _families(), _served_on()
    assert set(families) == set(served)
    for exposed, (path, constant) in families.items():
        packages = _recorders(_helpers(path, constant))
        assert packages, exposed
        cell = served[exposed]
        named = {process for process, words in ENDPOINT_WORDS.items() if words in cell}
        if "shared" in packages:  # recorded by code any process runs: every serving endpoint, summed
            assert len(named) >= 2 and "sum" in cell, (exposed, cell)
            assert {PROCESS_OF_PACKAGE[p] for p in packages - {"shared"}} <= named, (exposed, cell)
        else:
            assert named == {PROCESS_OF_PACKAGE[p] for p in packages}, (exposed, cell, packages)


def test_the_scrape_time_gauges_are_documented_on_the_api() -> None:
    from shared.metrics import SCRAPE_GAUGES

    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("### Scrape-time gauges (API `/metrics` only)"):text.index("### Multiprocess mode")]
    assert all(f"`{gauge.name}`" in section for gauge in SCRAPE_GAUGES)
