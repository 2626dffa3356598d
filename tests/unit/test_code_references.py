"""The words in the code point at real things: every ``package.module.name`` a docstring or comment cites
exists, and the metric families say what they are."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "worker", "scheduler", "shared")
_REFERENCE = re.compile(r"``((?:api|worker|scheduler|shared)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\(\))?``")


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` names an importable module, or an attribute path inside the longest one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            return False
        return True
    return False


def _references() -> list[tuple[str, str]]:
    cited = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for match in _REFERENCE.finditer(path.read_text(encoding="utf-8")):
                cited.append((str(path.relative_to(ROOT)), match.group(1)))
    return cited


def test_every_cited_module_and_function_exists() -> None:
    cited = _references()
    assert len(cited) > 50  # the scan finds the citations at all
    assert [(path, name) for path, name in cited if not _resolves(name)] == []


def test_the_attempt_histogram_reaches_the_longest_attempt() -> None:
    from shared.metrics import ATTEMPT_BUCKETS

    assert max(ATTEMPT_BUCKETS) >= 86_400  # timeout_secs goes up to 86 400 s


@pytest.mark.parametrize("module", ["shared.metrics", "scheduler.metrics"])
def test_metric_help_speaks_to_operators(module: str) -> None:
    from prometheus_client import Counter, Histogram

    families = [v for v in vars(importlib.import_module(module)).values() if isinstance(v, Counter | Histogram)]
    assert families
    described = [family for metric in families for family in metric.describe()]
    assert [f.name for f in described if "§" in f.documentation] == []
