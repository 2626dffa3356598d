"""The unfiltered jobs page (the list request nearly always), read with the API key in one prepared
statement and rendered with little Python.

Rendering full job records cost more CPU than the statement itself: psycopg2 decoded five JSONB columns
and two timestamps per job, the driver path built a dict per row and the rendering two more. Here the
statement's select list is made from the Job description (``shared.jobs.resource.JOB``): its fields in
order, timestamps already written as ``format_ts`` writes them, each JSON column as its text (NULL when it
is null, or empty where the field reads empty as ``{}``/``[]``). Python zips each row into the resource,
decodes the JSON text with content (``shared.db.engine.loads_json``, what psycopg2 would have called) and
applies the remaining writings of the description (defaults, the masked secret). The body is then the one
``JOB.render`` gives from the record, byte for byte (a Hypothesis test compares them).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from shared.apikeys import KEY_FIELDS
from shared.db.engine import loads_json
from shared.db.prepared import PreparedQuery
from shared.jobs.resource import JOB
from shared.jobs.store import JOBS, page_query, page_sql
from shared.resource import WRITERS, Field, Writing

CURSOR_KIND = "jobs"  # the kind named in the list's cursors (api.pagination)

# ``format_ts``: RFC 3339 in UTC, exactly six fractional digits, "Z".
_TIMESTAMP_SQL = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_READS_EMPTY = (Writing.OR_EMPTY_OBJECT, Writing.OR_EMPTY_ARRAY)


def _is_json(field: Field) -> bool:
    return field.read_from is not None and isinstance(JOBS.c[field.read_from].type, sa.JSON)


def _select_item(field: Field) -> str:
    column = f"m.{field.read_from}"
    if _is_json(field):
        # jsonb's text, what psycopg2 hands its JSON decoder; NULL where the value is null (or, for the
        # fields that read empty as null, empty), so that Python decodes only values with content.
        text = f"{column}::text"
        for trivial in ("null", "{}", "[]") if field.writing in _READS_EMPTY else ("null",):
            text = f"NULLIF({text}, '{trivial}')"
        return f"{text} AS {field.name}"
    if field.writing is Writing.TIMESTAMP:
        return f"{_TIMESTAMP_SQL.format(column)} AS {field.name}"
    return f"{column} AS {field.name}"


def _finish(field: Field) -> Callable[[Any], Any] | None:
    """What Python still does to the field's value as the statement selects it, if anything."""
    write = None if field.writing in (Writing.AS_IS, Writing.TIMESTAMP) else WRITERS[field.writing]
    if not _is_json(field):
        return write
    if write is None:
        return _decode
    return lambda text: write(None if text is None else loads_json(text))


def _decode(text: str | None) -> Any:
    return None if text is None else loads_json(text)


_FINISHING = tuple((field.name, finish) for field in JOB.fields if (finish := _finish(field)) is not None)


# The key's columns follow the job's (``zip`` over the job's names stops before them). Every row repeats
# them: scopes come as text, decoded once from the first row instead of once per job.
KEY_NAMES = tuple(field.name for field in KEY_FIELDS)
KEY_SQL = ", ".join(f"k.{field.element.name}{'::text' if field.name == 'key_scopes' else ''} AS {field.name}"
                    for field in KEY_FIELDS)

# A job row's version: the transaction that wrote it (a new one on every change, kept by freezing) and the
# job's ``updated_at``, which every change of a rendered field sets. ``api.job_page_cache`` keys renderings
# by it.
ROW_VERSION_SQL = "{0}.xmin::text || '@' || {0}.updated_at::text"


def _key_and_page_sql(after: bool, limit: int) -> str:
    """The API key with ``:digest`` and, in the same rows, the unfiltered page of its project's jobs, one row
    per job: its fields, the key's, its row version (one row with NULL job columns when the page is empty;
    none when the key is unknown)."""
    columns = ("m.created_at AS position_at, " + ", ".join(_select_item(field) for field in JOB.fields)
               + f", {ROW_VERSION_SQL.format('m')} AS row_version")
    return ("SELECT " + ", ".join(f"j.{name}" for name in JOB.names) + f", {KEY_SQL}, j.row_version FROM api_keys k "
            f"LEFT JOIN LATERAL ({page_sql('m', 'k.project_id', after, columns, limit)}) j ON true "
            "WHERE k.key_hash = :digest ORDER BY j.position_at DESC, j.id DESC")


@lru_cache(maxsize=512)  # limits are 2..MAX_LIMIT + 1 (a page and one more), each first or next
def _key_and_page(after: bool, limit: int) -> PreparedQuery:
    """One statement per page size: its limit is literal, so PostgreSQL keeps a generic plan."""
    return page_query(f"sluice_key_jobs_page_{limit}", _key_and_page_sql(after, limit), after)


# The page sizes whose statements are prepared. They are prepared before the key is known (the key is read
# in the same statement), so a caller with an unknown key-shaped token must not get one prepared per limit
# value on every pooled connection: other sizes run as plain text.
PREPARED_PAGE_SIZES = frozenset({DEFAULT_LIMIT, MAX_LIMIT})


def find_key_and_versioned_page(session: Session, digest: str, *, limit: int, after: tuple[datetime, str] | None
                                ) -> tuple[dict[str, Any] | None, list[tuple[dict[str, Any], str]]]:
    """(the key's columns as in ``shared.apikeys.KEY_FIELDS`` or ``None`` when unknown, up to ``limit`` Job
    resources of its project, newest first, strictly after the keyset position ``after``, each with its row
    version (``ROW_VERSION_SQL``))."""
    params: dict[str, Any] = {"digest": digest}
    if after is not None:
        params["after_created_at"], params["after_id"] = after
    rows = _key_and_page(after is not None, limit).tuples(session.connection(), params,
                                                          prepare=limit - 1 in PREPARED_PAGE_SIZES)
    if not rows:
        return None, []
    fields = len(JOB.fields)
    return key_of(rows[0][fields:-1]), [(_render(row), row[-1]) for row in rows if row[0] is not None]


def key_of(values: tuple[Any, ...]) -> dict[str, Any]:
    """The key's columns (``KEY_NAMES``) from their values as ``KEY_SQL`` selects them."""
    key = dict(zip(KEY_NAMES, values, strict=True))
    key["key_scopes"] = _decode(key["key_scopes"])
    return key


def _render(row: tuple[Any, ...]) -> dict[str, Any]:
    """The Job resource from a row of the statement (it runs 50 times per page)."""
    job = dict(zip(JOB.names, row, strict=False))
    for name, finish in _FINISHING:
        job[name] = finish(job[name])
    return job
