"""The unfiltered jobs page from this process's renderings of its jobs, checked against the database on
every request.

Lists are polled (dashboards, SDK loops, "wait until my job shows up") and jobs change rarely, so the
same first page is rendered and encoded again and again: per job, 37 fields read, zipped, defaulted and
masked, then JSON-encoded. Here the request's statement reads the key and, for the page, only each
job's id and row version (``api.job_page.ROW_VERSION_SQL``: the writing transaction and ``updated_at``).
When this process holds the JSON of every one of those jobs *at that version*, the body is those
renderings joined; otherwise the page is read and rendered in full by ``api.job_page``'s statement, as
before, and its renderings are kept for the next request.

Never stale: which jobs, in which order and at which versions comes from the database in the request's
own statement, so the page is the one a full read at that moment gives; a rendering is used only for the
row version it was made from, and rendering reads nothing but the row (``shared.jobs.resource``). A row
version also changes on writes that do not touch the resource (a miss, not an error). The check costs
the page's index scan, as the full read did, but none of its rendering.

Bounds: at most ``MAX_BYTES`` of renderings per process (a job is about 1 KB, more with a large payload
schema), and none older than ``LIFETIME_SECS`` (transaction ids wrap after about four billion
transactions; an hour is far below). Past either bound the cache starts over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from api.job_page import (
    CURSOR_KIND,
    KEY_SQL,
    PREPARED_PAGE_SIZES,
    ROW_VERSION_SQL,
    find_key_and_versioned_page,
    key_of,
)
from api.pagination import PAGE_MAX_BYTES, encode_cursor, items_within, json_array
from shared import json_codec
from shared.db.prepared import PreparedQuery
from shared.jobs.store import page_query, page_sql

MAX_BYTES = 32 * 1024 * 1024
LIFETIME_SECS = 3600.0


class RenderedJobs:
    """``"<id> <row version>"`` → (id, the Job resource's JSON, its ``created_at``) for this process, one
    rendering per job (a newer version replaces the older). Keyed by the page statement's own items, so a
    page's lookup is one dict read per job. Thread-safe: lookups are single dict reads under the GIL (a lost
    race only costs a rendering); changes take a lock, so the byte count always equals the bytes held."""

    def __init__(self, max_bytes: int = MAX_BYTES, lifetime_secs: float = LIFETIME_SECS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.lifetime_secs = lifetime_secs
        self._clock = clock
        self._renderings: dict[str, tuple[str, bytes, str]] = {}
        self._item_of: dict[str, str] = {}  # job id → its item in ``_renderings``
        self._bytes = 0  # of the JSON held
        self._since = clock()
        self._lock = threading.Lock()

    def find(self, items: list[str]) -> list[tuple[str, bytes, str]] | None:
        """The (id, JSON, created_at) of each ``"<id> <version>"`` in order, or ``None`` unless every one is
        held at exactly that version."""
        if self._clock() - self._since > self.lifetime_secs:
            self.clear()
            return None
        found = list(map(self._renderings.get, items))
        return None if None in found else found  # type: ignore[return-value]

    def keep(self, job: dict[str, Any], version: str) -> bytes:
        """Encode the Job resource ``job`` read at row ``version``, keep it, and return its JSON."""
        encoded = json_codec.dumps(job)
        job_id = job["id"]
        with self._lock:
            replaced = self._renderings.pop(self._item_of.get(job_id, ""), None)
            if replaced is not None:
                self._bytes -= len(replaced[1])
            if self._bytes + len(encoded) > self.max_bytes:
                self._clear()
            self._bytes += len(encoded)
            item = f"{job_id} {version}"
            self._item_of[job_id] = item
            self._renderings[item] = (job_id, encoded, job["created_at"])
        return encoded

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._renderings = {}
        self._item_of = {}
        self._bytes = 0
        self._since = self._clock()

    def __len__(self) -> int:
        return len(self._renderings)

    @property
    def held_bytes(self) -> int:
        """The size of the JSON held."""
        return self._bytes


def _key_and_versions_sql(after: bool, limit: int) -> str:
    """The API key with ``:digest`` and its project's unfiltered page as one text, ``"<id> <version>"`` per
    job joined by commas, newest first (NULL when the page is empty; no row when the key is unknown)."""
    columns = f"m.created_at AS position_at, m.id, {ROW_VERSION_SQL.format('m')} AS row_version"
    return (f"SELECT {KEY_SQL}, p.versions FROM api_keys k LEFT JOIN LATERAL ("
            "SELECT string_agg(j.id || ' ' || j.row_version, ',' ORDER BY j.position_at DESC, j.id DESC) AS versions "
            f"FROM ({page_sql('m', 'k.project_id', after, columns, limit)}) j) p ON true "
            "WHERE k.key_hash = :digest")


@lru_cache(maxsize=512)  # as api.job_page: one statement per literal limit, first or next
def _key_and_versions(after: bool, limit: int) -> PreparedQuery:
    return page_query(f"sluice_key_job_versions_{limit}", _key_and_versions_sql(after, limit), after)


def read_page(session: Session, digest: str, *, page: int, after: tuple[datetime, str] | None,
              cache: RenderedJobs) -> tuple[dict[str, Any] | None, bytes, str | None]:
    """(the key's columns or ``None`` when unknown, the JSON array of up to ``page`` Job resources of its
    project newest first and strictly after ``after``, the next page's cursor or ``None``). PostgreSQL."""
    params: dict[str, Any] = {"digest": digest}
    if after is not None:
        params["after_created_at"], params["after_id"] = after
    rows = _key_and_versions(after is not None, page + 1).tuples(session.connection(), params,
                                                                 prepare=page in PREPARED_PAGE_SIZES)
    if not rows:
        return None, b"", None
    versions = rows[0][-1].split(",") if rows[0][-1] else []
    found = cache.find(versions[:page])
    more = len(versions) > page
    key: dict[str, Any] | None = None
    if found is not None:
        key = key_of(rows[0][:-1])
    else:  # read and render the page in full (its own snapshot), keeping what it renders
        key, versioned = find_key_and_versioned_page(session, digest, limit=page + 1, after=after)
        if key is None:
            return None, b"", None
        kept = [(job["id"], cache.keep(job, version), job["created_at"]) for job, version in versioned]
        found, more = kept[:page], len(kept) > page
    body = json_array([entry[1] for entry in found])
    if len(body) > PAGE_MAX_BYTES:  # over the page's byte budget: end it early (within it, every item fits)
        fitting = items_within([len(encoded) for _, encoded, _ in found])
        found, more = found[:fitting], more or fitting < len(found)
        body = json_array([entry[1] for entry in found])
    if not more:
        return key, body, None
    return key, body, encode_cursor(CURSOR_KIND, found[-1][2], found[-1][0])
