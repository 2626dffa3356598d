"""A job read without the framework: ``GET /v1/jobs/{job}`` (by id or slug, no query) answered in front of
Flask (a lean path, ``api.lean_get``).

The view is one statement (the key and the job, ``shared.jobs.store.find_key_and_job``) and a rendering;
Flask, werkzeug and flask-smorest around it cost about as much CPU again. This path reads the same
statement, renders with ``render_job`` and answers 200 with the same body and headers. No key, a bad or
revoked key, a missing scope, a job not in the key's project, a query string, a path Flask routes
elsewhere (``batch``, ``batch-enable``, ``batch-disable``, a deeper path) or a failed read: Flask
answers, as it always did.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from api.job_render import render_job
from api.lean_get import Answer, LeanGet
from shared import json_codec
from shared.jobs.store import find_key_and_job

SCOPE = "jobs:read"
# The job route's ``jobref`` converter (``api.jobs``), ASCII only: anything else is Flask's to decode.
_PATH = re.compile(r"/v1/jobs/(?!(?:batch|batch-enable|batch-disable)$)([!-.0-~]+)")


class FastJobGet(LeanGet):
    """Wraps the Flask app's WSGI callable (``app.wsgi_app``); see the module doc."""

    route = "/v1/jobs/<jobref:job>"  # the Flask rule

    def handles(self, path: str) -> bool:
        return path.startswith("/v1/jobs/")

    def serve(self, environ: dict[str, Any], started: float) -> Answer | None:
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        digest = self.digest(environ)
        if match is None or digest is None or environ.get("QUERY_STRING"):
            return None
        ref = match.group(1)

        def read(session: Session) -> tuple[Any, Any]:  # the row holds the key's columns and the job's
            row = find_key_and_job(session, digest, ref)
            return row, row

        allowed = self.read_as(SCOPE, read)
        if allowed is None or allowed[1]["id"] is None:  # no such job in the key's project: Flask's 404
            return None
        principal, job = allowed
        return self.ok(environ, started, json_codec.dumps(render_job(job)), principal.project_id)
