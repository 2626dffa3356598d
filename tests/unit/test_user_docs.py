"""The documentation in the repository is written for users who never saw the design documents: no page
cites them (no "§" section numbers, no CONTRACT.md, no "the contract"), and every relative link points at
a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").rglob("*.md"),
                ROOT / "bench" / "README.md"])
CITATION = re.compile(r"§|CONTRACT|\b[Tt]he contract\b|handout")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_cites_no_design_document(page: Path) -> None:
    found = [f"{number}: {line.strip()}" for number, line in enumerate(page.read_text().splitlines(), 1)
             if CITATION.search(line)]
    assert found == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert missing == []


def test_the_citation_check_is_not_vacuous() -> None:
    assert CITATION.search("as CONTRACT §5.2 says") and CITATION.search("Decisions where the contract is silent")
    assert not CITATION.search("import-linter contracts")
