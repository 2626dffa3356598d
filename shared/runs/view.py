"""The Run resource (CONTRACT §4.6) as a JSON-ready dict: one rendering for the API and for webhooks."""

from __future__ import annotations

from typing import Any

from shared.db.models import Run
from shared.runs.resource import RUN


def run_to_dict(run: Run) -> dict[str, Any]:
    return RUN.render(run)
