"""The one statement that picks a run and starts its attempt, built from the admission rules and the
transition table::

    WITH RECURSIVE
         hinted AS (<:hint, if it may go now: no ready run has a higher priority, and no other project with
                     a ready run at its priority has fewer executing attempts> FOR UPDATE OF r),
         top, origin, after, wrapped, projects, shares AS (<the top ready priority; a window of at most
                     FAIR_WINDOW of its projects from :origin on, one index descent each; per project its
                     oldest ready run and its executing attempts>),
         fair   AS (<the oldest ready run of the fairest project, if :best> FOR UPDATE OF r SKIP LOCKED),
         best   AS (<any ready run of the top priority, if :best> LIMIT 1 FOR UPDATE OF r SKIP LOCKED),
         picked AS (SELECT * FROM hinted UNION ALL SELECT * FROM fair UNION ALL SELECT * FROM best LIMIT 1),
         moved  AS (UPDATE runs SET <queued → executing, from the table> FROM picked
                    WHERE picked.startable AND (NOT picked.limited OR :in_transaction) …),
         logged AS (INSERT INTO run_events <[delayed → queued,] queued → executing, attempt_started>)
    SELECT <the run and what its attempt needs>, moved.attempt, … FROM picked LEFT JOIN moved …

It comes in two forms built from the same text (``StartStatements``): ``hinted``, only the ``hinted`` part
(named ``picked`` there: the message's or waiter's own run, when it may go now and either no rival project
at its priority is waiting or its own project has no executing attempt), and ``full``, everything. A worker
sends the hinted form first, which nearly always starts the run; only when it picks nothing does the full
form follow. The hinted form's plan is a third the size: PostgreSQL initialises every node of a plan on
each execution, used or not, and the fair pick's nodes cost more than the common start itself. For the same
reason, a deployment without a per-project cap gets both forms without the cap's count of the project's
executing attempts (``start_statements``).

A start commits asynchronously (``synchronous_commit`` off for its transaction alone): the worker goes on
to the endpoint without waiting for the disk to flush the start, which from an idle fleet is most of the
start's time (measured: 2.5 ms → 1.5 ms after a second of idleness). The attempt's outcome is committed
synchronously, which flushes the start with it. Only a crash of the PostgreSQL server while the call runs
(not a dropped connection) can lose a start: the run is then ready again, unstarted, and the sweep that
re-sends lost messages makes the call again, with the same attempt number and ``Idempotency-Key``: the
at-least-once delivery endpoints already deduplicate.

Which run (``:hint``, ``:best``, ``:wake``):

- a message's run: ``:hint`` names it; it is picked when it is ready (``queued``, not held, job enabled),
  no ready run has a higher priority and it is its project's turn (below) — index ranges that are empty
  in the common case — else, when ``:best``, the fairest ready run: at the top priority, the oldest ready
  run of the project with the fewest executing attempts in the window (ties: the project whose oldest
  ready run is oldest). ``best`` (any ready run of the top priority, in index order) only serves when the
  fair pick's rows are all locked by other starts. Messages are interchangeable wake-up tokens: every message claims
  something while anything is claimable.
- the fair share: a message's (or a waiter's) run goes only if no other project with a ready run at its
  priority has fewer executing attempts than its own project, among the window's projects. With one
  project, the two probes for another project at that priority find nothing and nothing is counted.
- the window: the projects with ready runs at the top priority after ``:origin`` (the project of the last
  run the worker process started; else the message's own), in id order, wrapping around, at most
  ``FAIR_WINDOW``. Successive fair picks thus visit every waiting project in turn, each at a bounded cost.
- a slot waiter (``worker.handoff``): ``:hint`` names it and ``:wake`` lets it be ``delayed`` too, once its
  retry back-off (``next_retry_at``) is over; it is woken (``delayed → queued``, message ``slot released``)
  and started in the same statement. Never ahead of a ready run of higher priority, nor of another
  project's turn.

Whether it starts: every rule of ``shared.runs.admission`` holds in SQL (``startable``); a run of a job
with a limit that applies (``limited``) is started only inside a transaction (``:in_transaction``), which
the limit script's answer commits or rolls back (``worker.start``). A run that is picked but not started
comes back unstarted (``attempt`` NULL) with its candidate fields, for the rules in Python to say why;
``:window_open_id`` and ``:settings_checked_id`` name the run whose window or version snapshot Python has
just checked, when the statement is sent again for it (``:snapshot_version`` and ``:snapshot_endpoint`` are
then what its ``attempt_started`` event records).

``SKIP LOCKED`` on the best run and the conditional update mean a duplicate message never starts a second
attempt; the hinted run is locked blocking: whoever holds it (a start deciding on its limits) holds it
only for a moment, and the run is then re-checked as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

from shared.db.prepared import PreparedStatement
from shared.egress.addresses import USERINFO_PATTERN
from shared.runs.admission import FIELDS, UNLIMITED, startable_sql
from shared.runs.status import RunStatus
from shared.runs.transitions import MARKER, set_clause, set_clause_through, state_change_event

S = RunStatus
NOW = "CAST(:now AS timestamptz)"
# What the attempt needs, in this order in every row (``worker.start.Picked``).
ATTEMPT_COLUMNS = ("id", "status", "job_id", "payload", "concurrency_key", "debug_mode", "max_attempts_override",
                   "timeout_secs_override", "endpoint_url", "fallback_endpoint_url", "timeout_secs", "max_attempts",
                   "retry_strategy", "retry_delays_secs", "version", "version_id", "webhook_secret",
                   "webhook_secret_previous", "traceparent", "project_id")
_RUN_COLUMNS = {"id", "status", "job_id", "project_id", "payload", "concurrency_key", "debug_mode",
                "max_attempts_override", "timeout_secs_override", "queued_at", "priority", "metadata", "tags",
                "traceparent"} | {
    name for name, sql in FIELDS.items() if sql.startswith("r.")}
_JOB_COLUMNS = {"timezone", "endpoint_url", "fallback_endpoint_url", "timeout_secs", "max_attempts", "retry_strategy",
                "retry_delays_secs", "version", "version_id", "webhook_secret", "webhook_secret_previous"} | {
    name for name, sql in FIELDS.items() if sql.startswith("j.")}
_SELECTED = ", ".join([f"r.{c}" for c in sorted(_RUN_COLUMNS)]
                      + [f"j.{c}" for c in sorted(_JOB_COLUMNS - _RUN_COLUMNS)])
_READY = "r.held_at IS NULL AND j.enabled IS true"
# "status is queued" for a row looked up by id, written so the planner does not take the partial ready index
# (it holds id as its last column) and filter the whole ready set for the id instead of one key lookup.
_BY_ID = (f"((r.status = 'queued') IS TRUE OR (CAST(:wake AS boolean) AND (r.status = 'delayed') IS TRUE "
          f"AND (r.next_retry_at IS NULL OR r.next_retry_at <= {NOW})))")


def _pick(project_cap: bool) -> str:
    """The picked run's row; without a per-project cap its rule holds for every run, so the count behind it
    is neither made nor checked."""
    executing = FIELDS["project_executing"] if project_cap else "0"
    return (f"SELECT {_SELECTED}, {executing} AS project_executing, {startable_sql(project_cap=project_cap)} "
            f"AS startable, NOT {UNLIMITED.sql} AS limited FROM runs r JOIN jobs j ON j.id = r.job_id")


# How many projects with ready runs the fair pick compares: those after :origin, in id order, wrapping
# around. Each costs an index descent, a head lookup and a count (about 12 µs); comparing every one cost a
# start 12 ms with a thousand projects ready. As :origin follows the worker's starts, the window moves on
# and successive picks reach every waiting project.
FAIR_WINDOW = 32
# The fair share: the executing attempts of a project, and "another project has a ready run at this run's
# priority", as two probes of ix_runs_ready (project ids below and above this run's), each empty when one
# project runs alone.
_EXECUTING = "(SELECT count(*) FROM runs e WHERE e.project_id = {project} AND e.status = 'executing')"
# (Each probe is ordered as the index is, so that the planner walks it and no other index of runs.)
# ``COLLATE "C"`` on project ids matches that index's column: no other index of runs can serve these probes,
# whatever the statistics say.
_C = 'COLLATE "C"'
_RIVAL = (f"(SELECT b.project_id FROM runs b WHERE b.status = 'queued' AND b.priority = r.priority "
          f"AND b.project_id {_C} {{op}} r.project_id {_C} ORDER BY b.priority DESC, b.project_id {_C} LIMIT 1) "
          "IS NOT NULL")
_BY_PROJECT = f"ORDER BY b.priority DESC, b.project_id {_C}"
_TOP = "(SELECT priority FROM top)"


def _next_project(after: str | None) -> str:
    """The first project (after the project id ``after``, in id order) with a queued run at the top priority:
    one descent of ix_runs_ready. The fair pick's window is walked with it."""
    bound = "" if after is None else f"AND b.project_id {_C} > {after} {_C} "
    return (f"(SELECT b.project_id FROM runs b WHERE b.status = 'queued' AND b.priority = {_TOP} "
            f"{bound}{_BY_PROJECT} LIMIT 1)")


_STRIP_USERINFO = f"regexp_replace({{url}}, '{USERINFO_PATTERN}', '\\1//')"
_SETTINGS_CHECKED = "picked.id = :settings_checked_id"
# A run whose snapshot settings Python checked records the snapshot's version and endpoint in attempt_started.
_EVENT_VERSION = f"CASE WHEN {_SETTINGS_CHECKED} THEN :snapshot_version ELSE picked.version END"
_EVENT_ENDPOINT = f"CASE WHEN {_SETTINGS_CHECKED} THEN :snapshot_endpoint ELSE picked.endpoint_url END"
_CANDIDATE = "json_build_object(" + ", ".join(f"'{name}', picked.{name}" for name in (*FIELDS, "timezone")) + ")"
_LIMITS = ("json_build_array(picked.attempt, picked.priority, picked.metadata, picked.tags, picked.max_concurrency, "
           "picked.max_concurrency_per_key, picked.rate_limit_max, picked.rate_limit_window_secs, "
           "picked.rate_limit_keys)")

# With other projects ready at the run's priority: its project has no more executing attempts than theirs.
# A project without executing attempts has no more than any other: its run goes without the other projects'
# shares being made (one index descent and count each; with a thousand projects ready, most of a start), in
# either form: in a fleet shared by many projects the hinted form then starts most runs alone.
_IDLE_TURN = f"""
           OR {_EXECUTING.format(project="r.project_id")} = 0"""
_FAIR_TURN = f"""{_IDLE_TURN}
           OR NOT EXISTS (SELECT 1 FROM shares s WHERE s.project_id <> r.project_id
                            AND s.executing < {_EXECUTING.format(project="r.project_id")})"""
_HINTED = f"""{MARKER}
WITH RECURSIVE hinted AS (
    {{pick}}
    WHERE r.id = :hint AND {_BY_ID} AND {_READY}
      -- No ready run of a higher priority: an index range "priority > this run's", empty in the common case.
      -- Ordered as ix_runs_ready is, so the planner walks that index: as NOT EXISTS, a generic plan may
      -- scan the whole table instead, expecting a match in the first rows (seen with a backlog of 50,000).
      AND (SELECT b.priority FROM runs b JOIN jobs bj ON bj.id = b.job_id
           WHERE b.status = 'queued' AND b.priority > r.priority AND b.held_at IS NULL AND bj.enabled IS true
           ORDER BY b.priority DESC LIMIT 1) IS NULL
      -- The fair share: alone at its priority, or its project has no more executing attempts than any
      -- other project with a ready run at the top priority.
      AND (NOT {_RIVAL.format(op="<")} AND NOT {_RIVAL.format(op=">")} {{fair_turn}})
    FOR UPDATE OF r
)"""
# The fair pick and its fallback, for a message whose own run may not go now.
_FALLBACK = f""", top AS (
    SELECT b.priority FROM runs b JOIN jobs bj ON bj.id = b.job_id
    WHERE b.status = 'queued' AND b.held_at IS NULL AND bj.enabled IS true
    ORDER BY b.priority DESC LIMIT 1
), origin AS (
    -- Where the walk over the projects begins: just after the worker's last start's project (:origin), or
    -- else the message's own.
    SELECT COALESCE(CAST(:origin AS text), (SELECT o.project_id FROM runs o WHERE o.id = :hint), '') AS project_id
), after AS (
    -- The projects with a queued run at the top priority after the origin, in id order: one index descent each.
    SELECT 1 AS n, {_next_project("(SELECT project_id FROM origin)")} AS project_id
    UNION ALL
    SELECT a.n + 1, {_next_project("a.project_id")}
    FROM after a WHERE a.project_id IS NOT NULL AND a.n < {FAIR_WINDOW}
), wrapped AS (
    -- Then from the first one again, up to the origin.
    SELECT 1 AS n, {_next_project(None)} AS project_id
    UNION ALL
    SELECT w.n + 1, {_next_project("w.project_id")}
    FROM wrapped w WHERE w.project_id {_C} < (SELECT project_id FROM origin) {_C} AND w.n < {FAIR_WINDOW}
), projects AS (
    -- The fair share's window: at most FAIR_WINDOW of them, from the origin on, wrapping around.
    (SELECT a.project_id FROM after a WHERE a.project_id IS NOT NULL
     UNION ALL
     SELECT w.project_id FROM wrapped w WHERE w.project_id {_C} <= (SELECT project_id FROM origin) {_C})
    LIMIT {FAIR_WINDOW}
), shares AS (
    -- Each such project with a ready run: its oldest ready run, and its executing attempts.
    SELECT p.project_id, head.queued_at, head.id, {_EXECUTING.format(project="p.project_id")} AS executing
    FROM projects p CROSS JOIN LATERAL (
        SELECT b.queued_at, b.id FROM runs b JOIN jobs bj ON bj.id = b.job_id
        WHERE b.status = 'queued' AND b.priority = {_TOP} AND b.project_id {_C} = p.project_id {_C}
          AND b.held_at IS NULL AND bj.enabled IS true
        {_BY_PROJECT}, b.queued_at, b.id LIMIT 1) head
), fair AS (
    -- The oldest ready run of the project with the fewest executing attempts (then the oldest head).
    {{pick}}
    WHERE r.status = 'queued' AND {_READY} AND CAST(:best AS boolean) AND r.priority = {_TOP}
      AND r.project_id {_C} = (SELECT s.project_id FROM shares s ORDER BY s.executing, s.queued_at, s.id LIMIT 1) {_C}
    ORDER BY r.priority DESC, r.project_id {_C}, r.queued_at, r.id
    LIMIT 1
    FOR UPDATE OF r SKIP LOCKED
), best AS (
    {{pick}}
    WHERE r.status = 'queued' AND {_READY} AND CAST(:best AS boolean)
    ORDER BY r.priority DESC, r.project_id {_C}, r.queued_at, r.id
    LIMIT 1
    FOR UPDATE OF r SKIP LOCKED
)"""
_WRITE = f""", moved AS (
    UPDATE runs SET {set_clause(S.EXECUTING, ())},
                    {set_clause_through(S.QUEUED, S.EXECUTING, "picked.status = 'delayed'")}
    FROM picked WHERE runs.id = picked.id AND runs.status = picked.status AND picked.startable
      AND (NOT picked.limited OR CAST(:in_transaction AS boolean))
    RETURNING runs.id, runs.attempt, runs.queued_at, picked.status AS old_status,
              {_EVENT_VERSION} AS version, {_STRIP_USERINFO.format(url=_EVENT_ENDPOINT)} AS endpoint_url
), logged AS (
    INSERT INTO run_events (id, run_id, type, message, data, created_at)
    {state_change_event(":e0_id", "moved.id", "'delayed'", S.QUEUED, ":wake_message")}
        FROM moved WHERE moved.old_status = 'delayed'
    UNION ALL
    {state_change_event(":e1_id", "moved.id", "'queued'", S.EXECUTING)} FROM moved
    UNION ALL
    SELECT :e2_id, moved.id, 'attempt_started', NULL,
           jsonb_build_object('attempt', moved.attempt, 'job_version', moved.version,
                              'endpoint_url', moved.endpoint_url), {NOW} FROM moved
)
SELECT {", ".join(f"picked.{c}" for c in ATTEMPT_COLUMNS)}, moved.attempt, COALESCE(moved.queued_at, picked.queued_at),
       picked.limited, CASE WHEN picked.limited THEN {_LIMITS} END,
       CASE WHEN NOT picked.startable THEN {_CANDIDATE} END
FROM picked LEFT JOIN moved ON moved.id = picked.id
-- The start commits without waiting for the WAL flush (this transaction only; see the module doc).
WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL
"""


def _sql(*, fallback: bool, project_cap: bool) -> str:
    pick = _pick(project_cap)
    if not fallback:  # the message's (or waiter's) own run if it may go now, unless its turn needs the shares
        return (_HINTED.replace("{fair_turn}", _IDLE_TURN).replace("WITH RECURSIVE hinted", "WITH picked")
                .replace("{pick}", pick) + _WRITE)
    return ((_HINTED.replace("{fair_turn}", _FAIR_TURN) + _FALLBACK).replace("{pick}", pick)
            + ", picked AS (SELECT * FROM hinted UNION ALL SELECT * FROM fair UNION ALL SELECT * FROM best LIMIT 1)"
            + _WRITE)


def _prepared(sql: str) -> PreparedStatement:
    return PreparedStatement.build(f"sluice_move_start_{hashlib.sha1(sql.encode()).hexdigest()[:12]}", sql)


@dataclass(frozen=True)
class StartStatements:
    """The two forms, for a deployment with or without a per-project cap (``SLUICE_PROJECT_MAX_EXECUTING``)."""

    hinted: PreparedStatement  # the message's (or waiter's) own run, when it may go now and its turn is plain
    full: PreparedStatement  # the hinted run with its fair turn among rival projects, else the fair pick, else any


@cache
def start_statements(*, project_cap: bool) -> StartStatements:
    return StartStatements(_prepared(_sql(fallback=False, project_cap=project_cap)),
                           _prepared(_sql(fallback=True, project_cap=project_cap)))
