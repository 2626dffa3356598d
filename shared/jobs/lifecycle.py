"""Job lifecycle (CONTRACT §3.2–§3.8): create, batch create, PATCH, clone and delete.

Every function takes the caller's ``Principal``, already schema-valid input (422 happened at the edge)
and ``now``; it never commits. Order of checks follows §1.5: ``project_id`` 403 → lookup 404 →
semantic 400 → conflict 409.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.apikeys import Principal
from shared.db.models import JobDependency, Run, RunEvent
from shared.egress.lookups import DeadlineLookups
from shared.errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed
from shared.ids import new_version_id, uuid7
from shared.jobs.config import SCHEDULE_FIELDS, URL_FIELDS, changed_fields, config_for_create, config_of, merge
from shared.jobs.enablement import release_held_runs
from shared.jobs.rules import check_config, field_of
from shared.jobs.store import (
    JOBS,
    JobRecord,
    find_job_record,
    insert_jobs,
    new_job_record,
    taken_slugs,
    update_job,
)
from shared.jobs.versions import VERSIONS, insert_versions, version_record
from shared.runs.effects import Effects
from shared.runs.moves import move_many, release_waiting
from shared.runs.status import ACTIVE, RunStatus
from shared.webhooks.signing import is_masked_value, mask_secret

log = logging.getLogger("sluice.jobs")

MASKED_SECRET_MESSAGE = "looks like a masked value; send the full secret"


def slug_conflict(slug: str) -> Conflict:
    return Conflict(f'slug "{slug}" already exists in this project')


def check_project_id(project_id: Any, principal: Principal) -> None:
    """403 when a body names another project than the key's (§2.1, §9.3)."""
    if project_id is not None and project_id != principal.project_id:
        raise Forbidden("project_id does not match the API key's project")


def require_job(session: Session, principal: Principal, ref: str, *, for_update: bool = False) -> JobRecord:
    job = find_job_record(session, principal.project_id, ref, for_update=for_update)
    if job is None:
        raise NotFound("job not found")
    return job


def _insert_new_jobs(session: Session, principal: Principal, configs: Sequence[Mapping[str, Any]],
                     now: datetime) -> list[dict[str, Any]]:
    """Insert jobs at version 1 with their first snapshot. A slug taken by a racing writer → 409."""
    records, versions = [], []
    for config in configs:
        job_id, version_id = uuid7(), new_version_id()
        records.append(new_job_record(job_id=job_id, project_id=principal.project_id, config=config,
                                      version_id=version_id, actor=principal.actor, now=now))
        versions.append(version_record(version_id=version_id, job_id=job_id, version=1, config=config,
                                       actor=principal.actor, now=now))
    try:
        if len(records) == 1:
            _insert_job_with_version(session, records[0], versions[0])
            versions = []  # written by the same statement
        else:
            insert_jobs(session, records)
    except IntegrityError:
        if len(configs) == 1:
            raise slug_conflict(configs[0]["slug"]) from None
        raise Conflict("a slug of this batch was just taken by another request; nothing was created") from None
    insert_versions(session, versions)
    for record in records:
        log.info("job created", extra={"job_id": record["id"], "project_id": record["project_id"]})
    return records


@lru_cache(maxsize=8)
def _job_with_version_statement(job_columns: tuple[str, ...]) -> sa.Insert:
    """``WITH new_job AS (INSERT INTO jobs … RETURNING id) INSERT INTO job_versions … SELECT … FROM new_job``:
    a job and its version 1 in one round trip. Built once per column set, then only bound."""
    values = {name: sa.bindparam(f"j_{name}", type_=JOBS.c[name].type) for name in job_columns}
    new_job = sa.insert(JOBS).values(values).returning(JOBS.c.id).cte("new_job")
    columns = ["id", "job_id", "version", "config", "created_by", "created_at"]
    source = sa.select(*[new_job.c.id if name == "job_id" else sa.bindparam(f"v_{name}", type_=VERSIONS.c[name].type)
                         for name in columns])
    return sa.insert(VERSIONS).from_select(columns, source)


def _insert_job_with_version(session: Session, record: Mapping[str, Any], version: Mapping[str, Any]) -> None:
    params = {f"j_{name}": value for name, value in record.items()}
    params.update({f"v_{name}": value for name, value in version.items() if name != "job_id"})
    session.execute(_job_with_version_statement(tuple(record)), params)


def _lookups(configs: Sequence[Mapping[str, Any]], fields: Iterable[str], allow_private: bool,
             lookups: DeadlineLookups | None) -> DeadlineLookups | None:
    """The request's write-time lookups, every host started at once under one deadline (none are made when
    private endpoints are allowed: then nothing is resolved)."""
    if allow_private:
        return None
    urls = [config[field] for config in configs for field in fields if config.get(field)]
    return (lookups or DeadlineLookups()).start(urls)


def create_job(session: Session, principal: Principal, body: Mapping[str, Any], *, now: datetime,
               allow_private: bool, lookups: DeadlineLookups | None = None) -> dict[str, Any]:
    """§3.2: the new job's record (version 1 stored alongside). On PostgreSQL its only write is one
    statement, so the API may run it in autocommit (``api.jobs``): keep it that way."""
    check_project_id(body.get("project_id"), principal)
    config = config_for_create(body)
    check_config(config, allow_private=allow_private,
                 resolver=_lookups([config], URL_FIELDS, allow_private, lookups))
    return _insert_new_jobs(session, principal, [config], now)[0]


def create_jobs_batch(session: Session, principal: Principal, items: Sequence[Mapping[str, Any]], *,
                      now: datetime, allow_private: bool,
                      lookups: DeadlineLookups | None = None) -> list[dict[str, Any]]:
    """§3.3: all items or none. Per-item 400/409 failures become one 422 keyed by item index. The items'
    hosts are looked up at once, under one deadline for the whole batch."""
    for item in items:
        check_project_id(item.get("project_id"), principal)
    configs = [config_for_create(item) for item in items]
    resolver = _lookups(configs, URL_FIELDS, allow_private, lookups)
    errors: dict[str, Any] = {}
    for index, config in enumerate(configs):
        try:
            check_config(config, allow_private=allow_private, resolver=resolver)
        except BadRequest as exc:
            errors[str(index)] = {field_of(exc): [exc.message]}
    taken = taken_slugs(session, principal.project_id, [c["slug"] for c in configs])
    seen: set[str] = set()
    for index, config in enumerate(configs):
        slug = config["slug"]
        if (slug in taken or slug in seen) and str(index) not in errors:
            errors[str(index)] = {"slug": [slug_conflict(slug).message]}
        seen.add(slug)
    if errors:
        raise ValidationFailed(errors, "Validation failed for some jobs; none were created")
    return _insert_new_jobs(session, principal, configs, now)


def clone_job(session: Session, principal: Principal, ref: str, body: Mapping[str, Any], *, now: datetime,
              allow_private: bool) -> dict[str, Any]:
    """§3.8: a new job with the source's current configuration, a new name and slug, enabled."""
    source = require_job(session, principal, ref)
    config = config_of(source)
    config.update(name=body["name"], slug=body["slug"], enabled=True)
    check_config(config, allow_private=allow_private, resolver=_lookups([config], URL_FIELDS, allow_private, None))
    return _insert_new_jobs(session, principal, [config], now)[0]


def _drop_echoed_mask(job: JobRecord, patch: dict[str, Any]) -> None:
    """§2.3: the current masked secret sent back means "unchanged"; any other masked-looking value is 422."""
    secret = patch.get("webhook_secret")
    if isinstance(secret, str) and is_masked_value(secret):
        if secret != mask_secret(job["webhook_secret"]):
            raise ValidationFailed({"webhook_secret": [MASKED_SECRET_MESSAGE]})
        del patch["webhook_secret"]


def patch_job(session: Session, principal: Principal, ref: str, body: Mapping[str, Any], *, now: datetime,
              allow_private: bool) -> tuple[JobRecord, Effects]:
    """§3.5: apply a partial update; return (the job as it now is, after-commit effects).

    The row is locked (``SELECT … FOR UPDATE``) for the rest of the transaction, so concurrent PATCHes of
    one job apply one after another and each change gets its own version. A PATCH that changes nothing
    writes nothing.
    """
    effects = Effects()
    check_project_id(body.get("project_id"), principal)
    job = require_job(session, principal, ref, for_update=True)
    patch = dict(body)
    _drop_echoed_mask(job, patch)
    stored = config_of(job)
    merged = merge(stored, patch)
    changed = changed_fields(stored, merged)
    if not changed:
        return job, effects
    url_fields = [f for f in URL_FIELDS if f in changed]
    check_config(merged, allow_private=allow_private, url_fields=url_fields,
                 resolver=_lookups([merged], url_fields, allow_private, None))
    if "slug" in changed and taken_slugs(session, principal.project_id, [merged["slug"]]):
        raise slug_conflict(merged["slug"])
    version_id = new_version_id()
    values: dict[str, Any] = {f: merged[f] for f in changed}
    values.update(version=job["version"] + 1, version_id=version_id, updated_by=principal.actor, updated_at=now)
    if SCHEDULE_FIELDS.intersection(changed):
        values["schedule_changed_at"] = now
    try:
        update_job(session, job["id"], values)
    except IntegrityError:
        raise slug_conflict(merged["slug"]) from None
    insert_versions(session, [version_record(version_id=version_id, job_id=job["id"], version=values["version"],
                                             config=merged, actor=principal.actor, now=now)])
    if "enabled" in changed and merged["enabled"]:
        release_held_runs(session, [job["id"]], effects)
    log.info("job updated", extra={"job_id": job["id"], "version": values["version"], "fields": changed})
    return {**job, **values}, effects


def delete_job(session: Session, principal: Principal, ref: str, *, force: bool, now: datetime) -> Effects:
    """§3.6: hard delete; with active runs only when ``force`` (they are canceled first, without webhooks).

    FK cascades remove versions, edges on either side, runs and webhook deliveries; run events have no
    foreign key (migration 0003) and are deleted first, here. Jobs that depended on this one have their
    waiting runs re-evaluated at once (§5.14).
    """
    job = require_job(session, principal, ref, for_update=True)
    job_id = job["id"]
    active = list(session.scalars(
        sa.select(Run.id).where(Run.job_id == job_id, Run.status.in_([s.value for s in ACTIVE]))
        .order_by(Run.created_at, Run.id)))
    if active and not force:
        raise Conflict(f"job has {len(active)} active runs; cancel them or retry with ?force=true")
    effects = Effects(suppress_webhooks=True)
    move_many(session, active, RunStatus.CANCELED, now=now, effects=effects)
    dependents = sorted(set(session.scalars(
        sa.select(JobDependency.job_id).where(JobDependency.depends_on_job_id == job_id,
                                              JobDependency.job_id != job_id))))
    session.execute(sa.delete(RunEvent).where(RunEvent.run_id.in_(sa.select(Run.id).where(Run.job_id == job_id))))
    session.execute(sa.delete(JOBS).where(JOBS.c.id == job_id))
    deleted = set(active)
    effects.enqueue[:] = [run_id for run_id in effects.enqueue if run_id not in deleted]
    for dependent in dependents:
        release_waiting(session, dependent, now=now, effects=effects)
    log.info("job deleted", extra={"job_id": job_id, "canceled_runs": len(active)})
    return effects
