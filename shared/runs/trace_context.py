"""W3C Trace Context (``traceparent``) of a run: taken from the trigger request, or a new trace.

A run records one ``traceparent``: the trigger request's header when it is valid (its trace id, its
parent id, its flags), otherwise a new trace (random trace and parent ids, flags ``01``: sampled). Bulk,
cron and replay runs without a valid header each start their own trace. Every attempt calls the endpoint
with the run's trace id and flags and a new parent id of its own, so the attempts are siblings in one trace.

Trace and parent ids only need to be unique, not secret: they come from the ``random`` module (seeded from
the operating system, and again in every forked process), as OpenTelemetry's own id generator does, which
costs no system call per id.
"""

from __future__ import annotations

import re
from random import getrandbits

VERSION = "00"
SAMPLED = "01"
# version-traceid-parentid-flags, lowercase hex; a future version may append "-<more>" (kept out).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE_ID, _ZERO_PARENT_ID = "0" * 32, "0" * 16


def accepted_traceparent(header: str | None) -> str | None:
    """The run's ``traceparent`` from a request header, in version 00 form, or None when it is not valid.

    Invalid: not lowercase hex in the four fields, version ``ff``, an all-zero trace or parent id, or
    extra content after a version 00 header (the rules of the W3C Trace Context recommendation).
    """
    if header is None:
        return None
    match = _TRACEPARENT.match(header.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == VERSION and rest) or trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    return f"{VERSION}-{trace_id}-{parent_id}-{flags}"


def new_traceparent() -> str:
    """A new trace: random trace and parent ids, sampled."""
    return f"{VERSION}-{getrandbits(128) or 1:032x}-{getrandbits(64) or 1:016x}-{SAMPLED}"  # never all zeros


def attempt_traceparent(run_traceparent: str | None) -> str:
    """The header of one attempt's call: the run's trace id and flags, a new parent id. A run from before
    runs recorded their trace (``None``) gets a new trace per attempt."""
    if run_traceparent is None:
        return new_traceparent()
    _, trace_id, _, flags = run_traceparent.split("-", 3)
    return f"{VERSION}-{trace_id}-{getrandbits(64) or 1:016x}-{flags}"
