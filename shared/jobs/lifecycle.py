"""Job lifecycle (CONTRACT §3.2–§3.8): create, batch create, PATCH, clone and delete.

Every function takes the caller's ``Principal``, already schema-valid input (422 happened at the edge)
and ``now``; it never commits. Order of checks follows §1.5: ``project_id`` 403 → lookup 404 →
semantic 400 → conflict 409.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.apikeys import Principal
from shared.db.models import JobDependency, Run, RunEvent
from shared.egress.addresses import AddressPolicy
from shared.errors import Conflict, Forbidden, NotFound, SluiceError, ValidationFailed
from shared.ids import new_version_id, uuid7
from shared.jobs.config import SCHEDULE_FIELDS, SECRET_FIELDS, changed_fields, config_for_create, config_of, merge
from shared.jobs.enablement import release_held_runs
from shared.jobs.rules import check_config
from shared.jobs.secrets import check_secret_pair, resolve_patched_secrets, seal_config
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
from shared.webhooks.sealing import SecretBox

log = logging.getLogger("sluice.jobs")

BATCH_FAILED = "Validation failed for some jobs; none were created"


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


def insert_new_jobs(session: Session, principal: Principal, configs: Sequence[Mapping[str, Any]],
                    now: datetime, box: SecretBox) -> list[dict[str, Any]]:
    """Insert jobs at version 1 with their first snapshot, secrets sealed. One job whose slug a racing writer
    has just taken → 409; in a batch, that slug's items → 422 by index (§3.3), the transaction still usable."""
    records, versions = [], []
    for config in (seal_config(config, box) for config in configs):
        job_id, version_id = uuid7(), new_version_id()
        records.append(new_job_record(job_id=job_id, project_id=principal.project_id, config=config,
                                      version_id=version_id, actor=principal.actor, now=now))
        versions.append(version_record(version_id=version_id, job_id=job_id, version=1, config=config,
                                       actor=principal.actor, now=now))
    if len(records) == 1:
        try:
            _insert_job_with_version(session, records[0], versions[0])
        except IntegrityError:
            raise slug_conflict(configs[0]["slug"]) from None
        versions = []  # written by the same statement
    else:
        try:
            with session.begin_nested():  # a savepoint: after a failure the slugs can still be read
                insert_jobs(session, records)
        except IntegrityError:
            raise _slugs_taken_meanwhile(session, principal, configs) from None
    insert_versions(session, versions)
    for record in records:
        log.info("job created", extra={"job_id": record["id"], "project_id": record["project_id"]})
    return records


def _slugs_taken_meanwhile(session: Session, principal: Principal,
                           configs: Sequence[Mapping[str, Any]]) -> SluiceError:
    """The error for a batch insert that hit a slug another request inserted after this one checked."""
    taken = taken_slugs(session, principal.project_id, [config["slug"] for config in configs])
    errors = {str(index): {"slug": [slug_conflict(config["slug"]).message]}
              for index, config in enumerate(configs) if config["slug"] in taken}
    if not errors:  # not a slug after all: a conflict this request cannot fix by itself
        return Conflict("a job of this batch conflicts with a concurrent change; nothing was created")
    return ValidationFailed(errors, BATCH_FAILED)


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


def create_job(session: Session, principal: Principal, body: Mapping[str, Any], *, now: datetime,
               policy: AddressPolicy, box: SecretBox) -> dict[str, Any]:
    """§3.2: the new job's record (version 1 stored alongside). On PostgreSQL its only write is one
    statement, so the API may run it in autocommit (``api.jobs``): keep it that way."""
    check_project_id(body.get("project_id"), principal)
    config = config_for_create(body)
    check_config(config, policy=policy)
    check_secret_pair(config, box)
    return insert_new_jobs(session, principal, [config], now, box)[0]


def clone_job(session: Session, principal: Principal, ref: str, body: Mapping[str, Any], *, now: datetime,
              policy: AddressPolicy, box: SecretBox) -> dict[str, Any]:
    """§3.8: a new job with the source's current configuration, a new name and slug, enabled."""
    source = require_job(session, principal, ref)
    config = config_of(source)
    config.update(name=body["name"], slug=body["slug"], enabled=True)
    check_config(config, policy=policy)
    return insert_new_jobs(session, principal, [config], now, box)[0]


def patch_job(session: Session, principal: Principal, ref: str, body: Mapping[str, Any], *, now: datetime,
              policy: AddressPolicy, box: SecretBox) -> tuple[JobRecord, Effects]:
    """§3.5: apply a partial update; return (the job as it now is, after-commit effects).

    The row is locked (``SELECT … FOR UPDATE``) for the rest of the transaction, so concurrent PATCHes of
    one job apply one after another and each change gets its own version. A PATCH that changes nothing
    writes nothing.
    """
    effects = Effects()
    found = find_job_record(session, principal.project_id, ref, for_update=True)
    patch = dict(body)
    resolve_patched_secrets(found, patch, box)  # a body check (422): before the 403 and the 404 (§1.5)
    check_project_id(body.get("project_id"), principal)
    if found is None:
        raise NotFound("job not found")
    job = found
    stored = config_of(job)
    merged = merge(stored, patch)
    changed = changed_fields(stored, merged)
    if not changed:
        return job, effects
    check_config(merged, policy=policy)
    check_secret_pair(merged, box)
    if "slug" in changed and taken_slugs(session, principal.project_id, [merged["slug"]]):
        raise slug_conflict(merged["slug"])
    merged = seal_config(merged, box)
    version_id = new_version_id()
    # A plain secret stored before encryption is sealed along with the change.
    values: dict[str, Any] = {f: merged[f] for f in changed}
    values.update({f: merged[f] for f in SECRET_FIELDS if merged[f] != stored[f]})
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
    """§3.6: hard delete; with active runs only when ``force`` (they are canceled first, without webhooks;
    the workers of executing ones are signalled after the commit, as for any cancel).

    FK cascades remove versions, edges on either side, runs and webhook deliveries; run events have no
    foreign key (migration 0003) and are deleted first, here. Jobs that depended on this one have their
    waiting runs re-evaluated at once (§5.14).
    """
    job = require_job(session, principal, ref, for_update=True)
    job_id = job["id"]
    keys = {run_id: key for run_id, key in session.execute(
        sa.select(Run.id, Run.concurrency_key).where(Run.job_id == job_id, Run.status.in_([s.value for s in ACTIVE]))
        .order_by(Run.created_at, Run.id))}
    active = list(keys)
    if active and not force:
        raise Conflict(f"job has {len(active)} active runs; cancel them or retry with ?force=true")
    effects = Effects(suppress_webhooks=True)
    for moved in move_many(session, active, RunStatus.CANCELED, now=now, effects=effects):
        if moved.old_status == RunStatus.EXECUTING.value:  # its worker stops within about a second (§5.17)
            effects.canceled_attempts.append((moved.id, job_id, keys[moved.id]))
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
