"""Request schemas of the jobs endpoints (CONTRACT §2.1, §1.7): what decides 422 from the body alone.

Loading returns only the keys that were sent (absent ≠ null; PATCH gives null a meaning). Semantic rules
(400) run later on the merged configuration (``shared.jobs.rules``). The responses are described in
``shared.jobs.resource``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import marshmallow as ma
from marshmallow import validate

from api.paths import JOB_SIBLINGS
from api.schemas.fields import (
    BaseSchema,
    QueryBoolean,
    QueryInteger,
    StrictBoolean,
    StrictInteger,
    StrictString,
    StringMap,
)
from shared.dependencies.edges import CONDITIONS
from shared.runs.admission import POLICIES
from shared.runs.retries import STRATEGIES
from shared.webhooks.signing import is_masked_value, webhook_secret_problem

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
RESERVED_SLUGS = frozenset(JOB_SIBLINGS)
_SLUG_RE = re.compile(SLUG_PATTERN)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ma.ValidationError("Must not be blank.")


def _slug(value: str) -> None:
    if not 1 <= len(value) <= 128:
        raise ma.ValidationError("Length must be between 1 and 128.")
    if not _SLUG_RE.fullmatch(value):
        raise ma.ValidationError(f"Must match {SLUG_PATTERN}.")
    if value in RESERVED_SLUGS:
        raise ma.ValidationError(f'"{value}" is reserved (it is a route under /v1/jobs).')


def _absolute_url(value: str) -> None:
    """§1.7 shape: absolute with a host, ≤ 2048. Scheme and address policy are 400 (``check_url_for_write``)."""
    if value == "":
        return  # optional URLs: "" means null (§2.3); endpoint_url has its own length check
    if len(value) > 2048:
        raise ma.ValidationError("Longer than maximum length 2048.")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ma.ValidationError("Must be an absolute URL with a host.") from None
    if not parts.scheme or not parts.netloc or not host:
        raise ma.ValidationError("Must be an absolute URL with a host.")


def _secret_shape(value: str) -> None:
    if value == "" or is_masked_value(value):
        return  # "" is null; a masked value is judged against the stored secret (§2.3)
    problem = webhook_secret_problem(value)
    if problem:
        raise ma.ValidationError(problem)


def _secret_shape_on_create(value: str) -> None:
    if value != "" and (problem := webhook_secret_problem(value)):
        raise ma.ValidationError(problem)


MAX_SCHEMA_DEPTH = 100


def _shallow_enough(value: Any) -> None:
    """``payload_schema`` nesting ≤ 100 levels, measured iteratively (depth is attacker-controlled)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise ma.ValidationError(f"Must not be nested deeper than {MAX_SCHEMA_DEPTH} levels.")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _str(max_len: int, **kwargs: Any) -> StrictString:
    return StrictString(validate=validate.Length(max=max_len), allow_none=True, **kwargs)


def _int(low: int, high: int, **kwargs: Any) -> StrictInteger:
    kwargs.setdefault("allow_none", True)
    return StrictInteger(validate=validate.Range(min=low, max=high), **kwargs)


class RateLimitKeySchema(BaseSchema):
    name = StrictString(required=True, validate=validate.Length(min=1, max=64))
    max = StrictInteger(required=True, validate=validate.Range(min=1, max=100000))
    window_secs = StrictInteger(required=True, validate=validate.Range(min=1, max=86400))


class _JobFieldsSchema(BaseSchema):
    """Every W field with its §2.1/§1.7 rules; subclasses set requiredness and null handling."""

    project_id = StrictString(allow_none=True)
    group_id = _str(128)
    description = _str(2000)
    cron = _str(128)
    payload_schema = ma.fields.Dict(allow_none=True, validate=_shallow_enough)
    tags = StringMap(max_entries=20, max_value_len=256, allow_none=True)
    fallback_endpoint_url = StrictString(validate=_absolute_url, allow_none=True)
    max_attempts = _int(1, 100)
    timeout_secs = _int(1, 86400)
    max_concurrency = _int(0, 10000)
    max_concurrency_per_key = _int(0, 10000)
    execution_window_cron = _str(128)
    timezone = StrictString(allow_none=True)
    rate_limit_max = _int(0, 100000)
    rate_limit_window_secs = _int(0, 86400)
    rate_limit_keys = ma.fields.List(ma.fields.Nested(RateLimitKeySchema), validate=validate.Length(max=10),
                                     allow_none=True)
    default_run_metadata = StringMap(max_entries=50, max_value_len=1024, allow_none=True)
    dedup_window_secs = _int(0, 2592000)
    webhook_url = StrictString(validate=_absolute_url, allow_none=True)
    run_ttl_secs = _int(0, 2592000)
    retry_strategy = StrictString(validate=validate.OneOf(STRATEGIES), allow_none=True)
    retry_delays_secs = ma.fields.List(StrictInteger(validate=validate.Range(min=1, max=86400)),
                                       validate=validate.Length(max=100), allow_none=True)
    environment_id = _str(128)
    version_policy = StrictString(validate=validate.OneOf(POLICIES), allow_none=True)
    backwards_compatible = StrictBoolean(allow_none=True)


class JobCreateSchema(_JobFieldsSchema):
    """§3.2 body: ``name``, ``slug``, ``endpoint_url`` required; null elsewhere means absent."""

    name = StrictString(required=True, validate=[validate.Length(min=1, max=255), _not_blank])
    slug = StrictString(required=True, validate=_slug)
    endpoint_url = StrictString(required=True, validate=[validate.Length(min=1), _absolute_url])
    enabled = StrictBoolean(allow_none=True)
    webhook_secret = StrictString(validate=_secret_shape_on_create, allow_none=True)
    webhook_secret_previous = StrictString(validate=_secret_shape_on_create, allow_none=True)


class JobPatchSchema(_JobFieldsSchema):
    """§3.5 body: any W field; null clears, but not for ``name``, ``slug``, ``endpoint_url``, ``enabled``."""

    name = StrictString(validate=[validate.Length(min=1, max=255), _not_blank])
    slug = StrictString(validate=_slug)
    endpoint_url = StrictString(validate=[validate.Length(min=1), _absolute_url])
    enabled = StrictBoolean()
    webhook_secret = StrictString(validate=_secret_shape, allow_none=True)
    # Also takes the current webhook_secret's mask: that secret moves here (a rotation in one PATCH).
    webhook_secret_previous = StrictString(validate=_secret_shape, allow_none=True)


class JobCloneSchema(BaseSchema):
    name = StrictString(required=True, validate=[validate.Length(min=1, max=255), _not_blank])
    slug = StrictString(required=True, validate=_slug)


class JobBatchToggleSchema(BaseSchema):
    """§3.4: ``ids`` or its alias ``job_ids`` (exactly one), 1..100 job ids or slugs."""

    ids = ma.fields.List(StrictString(), validate=validate.Length(min=1, max=100))
    job_ids = ma.fields.List(StrictString(), validate=validate.Length(min=1, max=100))

    @ma.validates_schema
    def _exactly_one(self, data: dict[str, Any], **_: Any) -> None:
        if ("ids" in data) == ("job_ids" in data):
            raise ma.ValidationError('Send exactly one of "ids" or "job_ids".', "_schema")


def _no_nul(value: str) -> None:
    if "\x00" in value:
        raise ma.ValidationError("Must not contain the NUL character (U+0000).")


class JobListQuerySchema(BaseSchema):
    limit = QueryInteger(validate=validate.Range(min=1))
    cursor = ma.fields.String(validate=_no_nul)
    project_id = ma.fields.String(validate=_no_nul)
    slug = ma.fields.String(validate=_no_nul)
    tag_key = ma.fields.String(validate=_no_nul)
    tag_value = ma.fields.String(validate=_no_nul)
    enabled = QueryBoolean()

    @ma.validates_schema
    def _tag_value_needs_key(self, data: dict[str, Any], **_: Any) -> None:
        if "tag_value" in data and "tag_key" not in data:
            raise ma.ValidationError("tag_value requires tag_key.", "tag_value")


class PageQuerySchema(BaseSchema):
    limit = QueryInteger(validate=validate.Range(min=1))
    cursor = ma.fields.String(validate=_no_nul)


class DeleteQuerySchema(BaseSchema):
    force = QueryBoolean()


class DependencyCreateSchema(BaseSchema):
    depends_on_job_id = StrictString(required=True, validate=validate.Length(min=1))
    condition = StrictString(validate=validate.OneOf(CONDITIONS), allow_none=True)
