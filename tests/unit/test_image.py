"""The container image recipe (deploy/Dockerfile) and its constraints file, read offline: the base image is
pinned by digest, every runtime dependency is installed at the version the constraints file fixes, and the
API starts through ``sluice api``."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def single(keyword: str) -> str:
    values = [rest for kw, rest in instructions() if kw == keyword]
    assert len(values) == 1, f"{keyword}: {values}"
    return values[0]


def pins() -> dict[str, str]:
    pinned = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line!r}"
            pinned[canonicalize_name(name)] = version
    return pinned


def runtime_closure() -> dict[str, Requirement]:
    """Every distribution ``pip install .`` brings in (no extras of sluice), with the requirement naming it."""
    seen: dict[str, Requirement] = {}
    done: set[tuple[str, str]] = set()
    pending = [(Requirement(r), "") for r in metadata.requires("sluice") or []]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        seen.setdefault(name, requirement)
        for wanted in {"", *requirement.extras}:
            if (name, wanted) not in done:
                done.add((name, wanted))
                pending += [(Requirement(r), wanted) for r in metadata.requires(requirement.name) or []]
    return seen


def test_base_image_is_pinned_by_digest() -> None:
    base = single("FROM")
    assert re.fullmatch(r"python:3\.11[.\w-]*-slim[\w-]*@sha256:[0-9a-f]{64}", base), base


def test_the_api_starts_through_sluice_api() -> None:
    assert json.loads(single("CMD")) == ["sluice", "api"]  # prepares the metrics directory, JSON logs
    assert "tini" in json.loads(single("ENTRYPOINT"))[0]
    assert single("USER").split(":")[0] not in {"root", "0"}
    assert set(single("EXPOSE").split()) == {"8080", "9100", "9101", "9102"}


def test_the_image_installs_from_the_constraints_file() -> None:
    runs = " ".join(rest for kw, rest in instructions() if kw == "RUN")
    assert "pip install --no-cache-dir -c deploy/constraints.txt ." in runs
    assert ".venv" in DOCKERIGNORE.read_text().split() and "deploy/constraints.txt" not in DOCKERIGNORE.read_text()


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    closure = runtime_closure()
    missing = sorted(set(closure) - set(pinned))
    assert not missing, f"not pinned in deploy/constraints.txt: {missing}"
    outside = {name: (pinned[name], str(req.specifier)) for name, req in closure.items()
               if not req.specifier.contains(pinned[name], prereleases=True)}
    assert not outside, f"pins outside the ranges that asked for them: {outside}"
    extra = sorted(set(pinned) - set(closure))
    assert not extra, f"pinned but not installed by `pip install .`: {extra}"
