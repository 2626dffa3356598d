"""Path segments of the jobs routes, for Flask's converters and the front layer's routes alike."""

from __future__ import annotations

import re

# Literal routes under /v1/jobs: never a job id or slug (``GET /v1/jobs/batch`` is 405, not a lookup).
JOB_SIBLINGS = ("batch", "batch-enable", "batch-disable")
NOT_A_JOB_SIBLING = rf"(?!(?:{'|'.join(re.escape(name) for name in JOB_SIBLINGS)})\Z)"
# A segment of printable ASCII other than "/": the front layer's job references. Anything else (non-ASCII,
# which the server hands over undecoded) is Flask's to decode and answer.
ASCII_SEGMENT = r"[!-.0-~]+"
