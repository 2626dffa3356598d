"""The unfiltered jobs page (§3.1: the list request nearly always), read with the API key in one prepared
statement and rendered with little Python.

Rendering full job records cost more CPU than the statement itself: psycopg2 decoded five JSONB columns and
two timestamps per job, the driver path built a dict per row and ``render_job`` two more. Here the statement
selects the Job resource's fields in ``JOB_FIELDS`` order, with the timestamps already written as
``format_ts`` writes them and each JSON column as its text (NULL when it is null, or empty where
``render_job`` defaults it); Python zips each row into the resource, decodes the JSON text with content
(``shared.db.engine.loads_json``, exactly what psycopg2 would have called), applies ``render_job``'s defaults and
masks the secret. The body is then byte-for-byte the one ``render_job`` gives (a test
compares them over varied jobs). PostgreSQL only (LATERAL, ``to_char``): filtered lists and SQLite read
records and render them with ``render_job``.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.job_render import JOB_FIELDS
from api.pagination import encode_cursor
from shared.apikeys import KEY_FIELDS, KEY_TYPES
from shared.db.engine import loads_json
from shared.db.models import UTCDateTime
from shared.db.prepared import HotQuery
from shared.jobs.store import JOBS, page_query, page_sql
from shared.webhooks.signing import mask_secret

CURSOR_KIND = "jobs"  # the kind named in the list's cursors (api.pagination)

# ``format_ts``: RFC 3339 in UTC, exactly six fractional digits, "Z".
_TIMESTAMP_SQL = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


# JSON columns that ``render_job`` writes as ``value or <empty>``: an empty or null value needs no decoding.
_DEFAULTED = ("tags", "rate_limit_keys", "default_run_metadata", "retry_delays_secs")


def _select_item(name: str) -> str:
    column_type = JOBS.c[name].type
    if isinstance(column_type, sa.JSON):
        # jsonb's text, what psycopg2 hands its JSON decoder; NULL where the value is null (or, for the
        # defaulted columns, empty), so that Python decodes only values with content.
        trivial = ("null", "{}", "[]") if name in _DEFAULTED else ("null",)
        text = f"m.{name}::text"
        for value in trivial:
            text = f"NULLIF({text}, '{value}')"
        return f"{text} AS {name}"
    if isinstance(column_type, UTCDateTime):
        return f"{_TIMESTAMP_SQL.format('m.' + name)} AS {name}"
    return f"m.{name}"


# The key's columns follow the job's (``zip`` over ``JOB_FIELDS`` stops before them). Every row repeats
# them: scopes come as text, decoded once from the first row instead of once per job.
KEY_NAMES = tuple(field.name for field in KEY_FIELDS)
KEY_SQL = ", ".join(f"k.{field.element.name}{'::text' if field.name == 'key_scopes' else ''} AS {field.name}"
                    for field in KEY_FIELDS)
KEY_RESULT_TYPES = {**KEY_TYPES, "key_scopes": sa.Text()}

# A job row's version: the transaction that wrote it (a new one on every change, kept by freezing) and the
# job's ``updated_at``, which every change of a rendered field sets. ``api.job_page_cache`` keys renderings
# by it.
ROW_VERSION_SQL = "{0}.xmin::text || '@' || {0}.updated_at::text"


def _key_and_page_sql(after: bool, limit: int) -> str:
    """The API key with ``:digest`` and, in the same rows, the unfiltered page of its project's jobs, one row
    per job: its fields, the key's, its row version (one row with NULL job columns when the page is empty;
    none when the key is unknown)."""
    columns = ("m.created_at AS position_at, " + ", ".join(_select_item(name) for name in JOB_FIELDS)
               + f", {ROW_VERSION_SQL.format('m')} AS row_version")
    return ("SELECT " + ", ".join(f"j.{name}" for name in JOB_FIELDS) + f", {KEY_SQL}, j.row_version FROM api_keys k "
            f"LEFT JOIN LATERAL ({page_sql('m', 'k.project_id', after, columns, limit)}) j ON true "
            "WHERE k.key_hash = :digest ORDER BY j.position_at DESC, j.id DESC")


@lru_cache(maxsize=512)  # limits are 2..MAX_LIMIT + 1 (a page and one more), each first or next
def _key_and_page(after: bool, limit: int) -> HotQuery:
    """One prepared statement per page size: its limit is literal, so PostgreSQL keeps a generic plan."""
    return page_query(f"sluice_key_jobs_page_{limit}", _key_and_page_sql(after, limit), after,
                      {**KEY_RESULT_TYPES, "row_version": sa.Text()})


def find_key_and_rendered_page(session: Session, digest: str, *, limit: int, after: tuple[datetime, str] | None
                               ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the key's columns as in ``shared.apikeys.KEY_FIELDS`` or ``None`` when unknown, up to ``limit`` Job
    resources of its project, newest first, strictly after the keyset position ``after``)."""
    key, versioned = find_key_and_versioned_page(session, digest, limit=limit, after=after)
    return key, [job for job, _ in versioned]


def find_key_and_versioned_page(session: Session, digest: str, *, limit: int, after: tuple[datetime, str] | None
                                ) -> tuple[dict[str, Any] | None, list[tuple[dict[str, Any], str]]]:
    """``find_key_and_rendered_page`` with each Job resource's row version (``ROW_VERSION_SQL``)."""
    params: dict[str, Any] = {"digest": digest}
    if after is not None:
        params["after_created_at"], params["after_id"] = after
    rows = _key_and_page(after is not None, limit).tuples(session.connection(), params)
    if not rows:
        return None, []
    return key_of(rows[0][len(JOB_FIELDS):-1]), [(_render(row), row[-1]) for row in rows if row[0] is not None]


def key_of(values: tuple[Any, ...]) -> dict[str, Any]:
    """The key's columns (``KEY_NAMES``) from their values as ``KEY_SQL`` selects them."""
    key = dict(zip(KEY_NAMES, values, strict=True))
    key["key_scopes"] = _json(key["key_scopes"])
    return key


def _json(text: str | None) -> Any:
    return None if text is None else loads_json(text)


def _render(row: tuple[Any, ...]) -> dict[str, Any]:
    """The Job resource from a row of the statement; the defaults and the mask are ``render_job``'s. Written
    out, without helper calls: it runs 50 times per page and most JSON columns are NULL (``_select_item``)."""
    job = dict(zip(JOB_FIELDS, row, strict=False))
    if job["payload_schema"] is not None:
        job["payload_schema"] = loads_json(job["payload_schema"])
    job["tags"] = {} if job["tags"] is None else (loads_json(job["tags"]) or {})
    job["rate_limit_keys"] = [] if job["rate_limit_keys"] is None else (loads_json(job["rate_limit_keys"]) or [])
    job["default_run_metadata"] = ({} if job["default_run_metadata"] is None
                                   else (loads_json(job["default_run_metadata"]) or {}))
    job["webhook_secret"] = mask_secret(job["webhook_secret"])
    job["retry_delays_secs"] = ([] if job["retry_delays_secs"] is None
                                else (loads_json(job["retry_delays_secs"]) or []))
    return job


def cut_page(jobs: list[dict[str, Any]], page: int) -> tuple[list[dict[str, Any]], str | None]:
    """The first ``page`` of ``page + 1`` rendered jobs and the cursor after them when there were more."""
    if len(jobs) <= page:
        return jobs, None
    jobs = jobs[:page]
    return jobs, encode_cursor(CURSOR_KIND, jobs[-1]["created_at"], jobs[-1]["id"])
