"""Dependency edges between jobs (CONTRACT §3.9): list, create (no duplicates, no cycles), delete.

An edge ``job_id → depends_on_job_id`` says runs of ``job_id`` wait for ``depends_on_job_id``. Creation is
serialised per project (advisory lock ``("deps", project_id)``), so two concurrent requests cannot each
add half of a cycle. Run-time semantics live in ``shared.dependencies.gating``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.locks import lock_key
from shared.db.models import JobDependency
from shared.errors import Conflict, NotFound, semantic
from shared.ids import canonical_uuid, uuid7
from shared.jobs.store import JobRecord, before_position, find_job_record
from shared.runs.effects import Effects
from shared.runs.moves import release_waiting

EDGES: sa.Table = JobDependency.__table__  # type: ignore[assignment]
CONDITIONS = ("completed", "failed", "any")


def list_edges(session: Session, job_id: str, *, limit: int, after: tuple[datetime, str] | None = None
               ) -> list[Mapping[str, Any]]:
    """Edges whose dependent is ``job_id``, newest first, strictly after the keyset position ``after``."""
    query = sa.select(EDGES).where(EDGES.c.job_id == job_id)
    if after is not None:
        query = query.where(before_position(EDGES.c.created_at, EDGES.c.id, after))
    query = query.order_by(EDGES.c.created_at.desc(), EDGES.c.id.desc()).limit(limit)
    return cast(list[Mapping[str, Any]], session.execute(query).mappings().all())


def _reaches(edges: list[tuple[str, str]], start: str, goal: str) -> bool:
    """Whether ``goal`` is reachable from ``start`` following ``job → depends_on`` edges."""
    upstream: dict[str, list[str]] = {}
    for job_id, depends_on in edges:
        upstream.setdefault(job_id, []).append(depends_on)
    seen, stack = {start}, [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for nxt in upstream.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def create_edge(session: Session, job: JobRecord, depends_on_ref: str, condition: str, *,
                now: datetime) -> dict[str, Any]:
    """Add ``job`` → ``depends_on_ref`` (an id or slug in the job's project) and return the edge.

    400 ``depends_on_job_id: job not found`` for an unknown target or one in another project (never
    revealed), 400 for the job itself; 409 for an existing edge between the two jobs or a cycle.
    """
    project_id = job["project_id"]
    target = find_job_record(session, project_id, depends_on_ref)
    if target is None:
        raise semantic("depends_on_job_id", "job not found")
    if target["id"] == job["id"]:
        raise semantic("depends_on_job_id", "a job cannot depend on itself")
    lock_key(session, "deps", project_id)
    pairs = [(row[0], row[1]) for row in session.execute(
        sa.select(EDGES.c.job_id, EDGES.c.depends_on_job_id).where(EDGES.c.project_id == project_id))]
    if (job["id"], target["id"]) in pairs:
        raise Conflict(f'job already depends on "{target["slug"]}"')
    if _reaches(pairs, target["id"], job["id"]):
        raise Conflict(f'dependency on "{target["slug"]}" would create a cycle')
    edge = {"id": uuid7(), "project_id": project_id, "job_id": job["id"], "depends_on_job_id": target["id"],
            "condition": condition, "created_at": now}
    session.execute(sa.insert(EDGES), [edge])
    return edge


def delete_edge(session: Session, job: JobRecord, dep_id: str, *, now: datetime) -> Effects:
    """Remove the edge ``dep_id`` of ``job`` (404 otherwise); re-evaluate the job's waiting runs (§5.14)."""

    edge_id = canonical_uuid(dep_id) if len(dep_id) <= 40 else None
    if edge_id is None:
        raise NotFound("dependency not found")
    deleted = session.execute(
        sa.delete(EDGES).where(EDGES.c.id == edge_id, EDGES.c.job_id == job["id"]).returning(EDGES.c.id)
    ).first()
    if deleted is None:
        raise NotFound("dependency not found")
    effects = Effects()
    release_waiting(session, job["id"], now=now, effects=effects)
    return effects
