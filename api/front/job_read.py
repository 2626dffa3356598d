"""``GET /v1/jobs/{job}`` in front of Flask: a job by id or slug, no query.

The view is one statement (the key and the job, ``shared.jobs.store.find_key_and_job``) and a rendering;
Flask around it costs about as much CPU again. Served: a valid key with ``jobs:read`` and a job of its
project. A path Flask routes elsewhere (``batch``, ``batch-enable``, ``batch-disable``, a deeper path), a
query, a missing job: Flask's.
"""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from api.front.layer import Answer, FrontRequest
from api.paths import ASCII_SEGMENT, NOT_A_JOB_SIBLING
from shared import json_codec
from shared.jobs.resource import JOB
from shared.jobs.store import find_key_and_job


class JobRead:
    method = "GET"
    path = re.compile(rf"/v1/jobs/({NOT_A_JOB_SIBLING}{ASCII_SEGMENT})")
    rule = "/v1/jobs/<jobref:job>"
    reads_body = False

    def serve(self, request: FrontRequest, session: Session) -> Answer | None:
        if request.query:
            return None
        row = find_key_and_job(session, request.digest(), request.match.group(1))
        if request.admit(session, row, "jobs:read") is None or row is None or row["id"] is None:
            return None
        return 200, json_codec.dumps(JOB.render(row)), ()
