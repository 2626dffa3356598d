"""Batch create (CONTRACT §3.3): all items or none, every failing item reported by its index.

Each item is judged as a single create would judge it, and reported with the same message:

- the body schema (422; the caller checked it, ``BatchItem.errors``) — an item failing it is judged no
  further, as a single create would stop there;
- then, when no item failed its schema, a ``project_id`` of another project → 403 for the whole request
  (the schema's 422 precedes the 403, which precedes everything below: §1.5);
- the semantic rules on the item's configuration (a single create's 400), for items that passed the schema;
- slug uniqueness against the project's jobs and earlier items (a single create's 409), for items with no
  other failure. A schema-refused item whose ``slug`` itself is valid still claims it, so a later item
  with the same slug is reported now rather than after the first fix.

A slug another request inserts between the check and the insert is reported the same way, by index
(``shared.jobs.lifecycle.insert_new_jobs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from shared.apikeys import Principal
from shared.egress.addresses import AddressPolicy
from shared.errors import BadRequest, ValidationFailed
from shared.jobs.config import config_for_create
from shared.jobs.lifecycle import BATCH_FAILED, check_project_id, insert_new_jobs, slug_conflict
from shared.jobs.rules import check_config, field_of, url_lookups
from shared.jobs.secrets import check_secret_pair
from shared.jobs.store import taken_slugs
from shared.webhooks.sealing import SecretBox


@dataclass(frozen=True)
class BatchItem:
    """One item as the body schema left it: its loaded body, or the schema's errors and the slug it
    claims (``None`` when its ``slug`` is itself invalid or missing)."""

    body: Mapping[str, Any] | None
    errors: Mapping[str, Any] = field(default_factory=dict)
    slug: str | None = None

    @property
    def claimed_slug(self) -> str | None:
        return self.body["slug"] if self.body is not None else self.slug


def create_jobs_batch(session: Session, principal: Principal, items: Sequence[BatchItem], *, now: datetime,
                      policy: AddressPolicy, box: SecretBox) -> list[dict[str, Any]]:
    """Create every item's job, or none: ``ValidationFailed`` keyed by item index (``Forbidden`` for a
    ``project_id`` mismatch). The caller owns the transaction."""
    errors: dict[str, Any] = {str(index): dict(item.errors) for index, item in enumerate(items) if item.errors}
    if not errors:
        for item in items:
            check_project_id((item.body or {}).get("project_id"), principal)
    configs = {index: config_for_create(item.body) for index, item in enumerate(items) if item.body is not None}
    resolver = url_lookups(configs.values(), policy)  # every host of the batch looked up at once
    for index, config in configs.items():
        try:
            check_config(config, policy=policy, resolver=resolver)
            check_secret_pair(config, box)
        except BadRequest as exc:
            errors[str(index)] = {field_of(exc): [exc.message]}
    claimed = [item.claimed_slug for item in items]
    taken = taken_slugs(session, principal.project_id, [slug for slug in claimed if slug is not None])
    seen: set[str] = set()
    for index, slug in enumerate(claimed):
        if slug is None:
            continue
        if (slug in taken or slug in seen) and str(index) not in errors:
            errors[str(index)] = {"slug": [slug_conflict(slug).message]}
        seen.add(slug)
    if errors:
        raise ValidationFailed(errors, BATCH_FAILED)
    return insert_new_jobs(session, principal, [configs[index] for index in range(len(items))], now, box)
