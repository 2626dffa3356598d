"""A job's webhook secrets (CONTRACT §2.1, §2.3): what a PATCH means for them, the rules on the pair, and
their sealing before anything is stored.

``webhook_secret`` signs every call and webhook; ``webhook_secret_previous``, when set, signs them too, so
receivers can move from one secret to the other without a gap. Both are stored sealed
(``shared.webhooks.sealing``) in the job and in every version snapshot, and shown masked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.errors import ValidationFailed, semantic
from shared.jobs.config import SECRET_FIELDS
from shared.jobs.store import JOBS
from shared.jobs.versions import VERSIONS
from shared.webhooks.sealing import SecretBox, SecretUnreadable
from shared.webhooks.signing import is_masked_value, mask_secret

MASKED_SECRET_MESSAGE = "looks like a masked value; send the full secret"


def resolve_patched_secrets(job: Mapping[str, Any] | None, patch: dict[str, Any], box: SecretBox) -> None:
    """Rewrite ``patch``'s secret fields to what they mean, in place (§2.3); ``job`` None when there is no
    such job (a masked-looking value is then the body's 422, which comes before the lookup's 404).

    - the field's current mask sent back: unchanged (dropped);
    - for ``webhook_secret_previous``, the mask of the current ``webhook_secret``: that secret (a rotation
      in one PATCH: ``{"webhook_secret": "<new>", "webhook_secret_previous": "<mask of the current one>"}``);
    - any other masked-looking value: 422;
    - the very secret already stored in the field: unchanged (dropped), so nothing is re-versioned.
    """
    for field in SECRET_FIELDS:
        value = patch.get(field)
        if not isinstance(value, str) or value == "":
            continue
        stored = job[field] if job is not None else None
        if is_masked_value(value):
            if job is None:
                raise ValidationFailed({field: [MASKED_SECRET_MESSAGE]})
            if value == mask_secret(stored):
                del patch[field]
            elif field == "webhook_secret_previous" and job["webhook_secret"] and value == mask_secret(
                    job["webhook_secret"]):
                patch[field] = job["webhook_secret"]  # sealed; kept as it is
            else:
                raise ValidationFailed({field: [MASKED_SECRET_MESSAGE]})
        elif stored and _opens_to(box, stored, value):
            del patch[field]


def _opens_to(box: SecretBox, stored: str, value: str) -> bool:
    """Whether ``stored`` holds ``value``; one no key opens holds nothing: the value sent replaces it."""
    try:
        return box.open(stored) == value
    except SecretUnreadable:
        return False


def check_secret_pair(config: Mapping[str, Any], box: SecretBox) -> None:
    """400 unless ``webhook_secret_previous`` comes with a different ``webhook_secret``."""
    current, previous = config.get("webhook_secret"), config.get("webhook_secret_previous")
    if previous is None:
        return
    if current is None:
        raise semantic("webhook_secret_previous", "requires webhook_secret")
    if box.open(current) == box.open(previous):
        raise semantic("webhook_secret_previous", "must differ from webhook_secret")


def seal_config(config: Mapping[str, Any], box: SecretBox) -> dict[str, Any]:
    """``config`` with its secrets sealed (a value already sealed stays as it is)."""
    sealed = dict(config)
    for field in SECRET_FIELDS:
        if sealed.get(field):
            sealed[field] = box.seal(sealed[field])
    return sealed


def reseal_jobs(session: Session, box: SecretBox, *, after: str, limit: int) -> tuple[str | None, int]:
    """Seal under the current key the secrets of up to ``limit`` jobs with ids above ``after`` (plain ones
    included); ``(the last id seen or None when there are no more, how many jobs changed)``.

    Each row is updated only if its secrets are still the ones read, so a PATCH in between wins."""
    jobs = JOBS
    rows = session.execute(sa.select(jobs.c.id, *(jobs.c[f] for f in SECRET_FIELDS))
                           .where(jobs.c.id > after).order_by(jobs.c.id).limit(limit)).all()
    changed = 0
    for job_id, *stored in rows:
        resealed = {f: box.reseal(value) for f, value in zip(SECRET_FIELDS, stored, strict=True) if value}
        if any(resealed[f] != value for f, value in zip(SECRET_FIELDS, stored, strict=True) if value):
            session.execute(sa.update(jobs).where(jobs.c.id == job_id, *(
                jobs.c[f] == value if value else jobs.c[f].is_(None)
                for f, value in zip(SECRET_FIELDS, stored, strict=True))).values(resealed))
            changed += 1
    return (rows[-1][0] if rows else None), changed


def reseal_versions(session: Session, box: SecretBox, *, after: str, limit: int) -> tuple[str | None, int]:
    """``reseal_jobs`` for the version snapshots (immutable otherwise, so no race to guard)."""
    versions = VERSIONS
    rows = session.execute(sa.select(versions.c.id, versions.c.config).where(versions.c.id > after)
                           .order_by(versions.c.id).limit(limit)).all()
    changed = 0
    for version_id, config in rows:
        resealed = {f: box.reseal(config[f]) for f in SECRET_FIELDS if config.get(f)}
        resealed = {f: value for f, value in resealed.items() if value != config[f]}
        if resealed:
            session.execute(sa.text("UPDATE job_versions SET config = config || CAST(:patch AS jsonb) WHERE id = :id"),
                            {"patch": json.dumps(resealed), "id": version_id})
            changed += 1
    return (rows[-1][0] if rows else None), changed
