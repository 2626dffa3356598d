"""Semantic rules over a merged job configuration (CONTRACT §2.2): each failure is a 400.

Runs after the request schema (422) on the *merged* configuration: create = defaults + body, PATCH =
stored job + patch. The first failing rule wins, in the contract's table order, and its message names the
field: ``cron: invalid expression "61 * * * *"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from shared.egress.addresses import AddressPolicy, Resolver, check_url_for_write
from shared.egress.lookups import DeadlineLookups
from shared.errors import BadRequest, semantic
from shared.jobs.config import URL_FIELDS
from shared.payload_schemas.bounds import schema_problem
from shared.schedules.cron import CronError, is_valid_timezone, parse_cron

# Keywords whose string value is a reference resolved against the schema's base URI.
_REF_KEYWORDS = ("$ref", "$dynamicRef")


def url_lookups(configs: Iterable[Mapping[str, Any]], policy: AddressPolicy) -> Resolver | None:
    """The write-time lookups of every URL of ``configs``, all started at once under one deadline (a batch
    shares them); ``None`` when private endpoints are allowed, since nothing is resolved then."""
    if policy.allow_private:
        return None
    return DeadlineLookups().start(config[f] for config in configs for f in URL_FIELDS if config.get(f))


def check_config(config: Mapping[str, Any], *, policy: AddressPolicy, resolver: Resolver | None = None) -> None:
    """Raise ``BadRequest`` for the first §2.2 rule ``config`` breaks (the whole configuration: a PATCH
    re-checks every URL of the merged job too, since an address that passed at its write may be refused
    now, a name that resolves privately since or a policy that changed). ``resolver``: the request's
    lookups (``url_lookups``), default this configuration's own."""
    if resolver is None:
        resolver = url_lookups([config], policy)
    for field in ("cron", "execution_window_cron"):
        expr = config.get(field)
        if expr is not None:
            try:
                parse_cron(expr)
            except CronError as exc:
                raise semantic(field, str(exc)) from None
    timezone = config.get("timezone")
    if not is_valid_timezone(timezone):  # type: ignore[arg-type]
        raise semantic("timezone", f'unknown time zone "{timezone}"')
    if config.get("payload_schema") is not None:
        check_payload_schema(config["payload_schema"])
    for field in URL_FIELDS:
        url = config.get(field)
        if url is not None:
            check_url_for_write(field, url, policy=policy, resolver=resolver)
    if config.get("retry_strategy") == "custom" and not config.get("retry_delays_secs"):
        raise semantic("retry_delays_secs", "required when retry_strategy is custom")
    if config.get("rate_limit_max") is not None and config.get("rate_limit_window_secs") is None:
        raise semantic("rate_limit_window_secs", "required when rate_limit_max is set")
    if config.get("rate_limit_window_secs") is not None and config.get("rate_limit_max") is None:
        raise semantic("rate_limit_max", "required when rate_limit_window_secs is set")


def check_payload_schema(schema: Any) -> None:
    """A valid JSON Schema 2020-12 whose references are all local (``#…``), nothing ever fetched, within the
    bounds of ``shared.payload_schemas.bounds`` (size, fan-out, patterns RE2 can run)."""
    try:
        if _has_remote_ref(schema):
            raise semantic("payload_schema", "remote $ref is not allowed")
        if not _all_finite(schema):  # Python parses NaN, Infinity and 1e400; JSON and PostgreSQL do not
            raise semantic("payload_schema", "numbers must be finite (NaN and Infinity are not JSON)")
        Draft202012Validator.check_schema(schema)
        problem = schema_problem(schema)
        if problem is not None:
            raise semantic("payload_schema", problem)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        detail = f" at {where}" if where else ""
        raise semantic("payload_schema", f"not a valid JSON Schema 2020-12{detail}: {exc.message}") from None
    except RecursionError:
        raise semantic("payload_schema", "schema is nested too deeply") from None


def _has_remote_ref(schema: Any) -> bool:
    """Walk every object in the schema (iteratively: depth is attacker-controlled)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _REF_KEYWORDS and isinstance(value, str) and not value.startswith("#"):
                    return True
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return False


def _all_finite(schema: Any) -> bool:
    try:
        json.dumps(schema, allow_nan=False)
    except ValueError:
        return False
    return True


def field_of(error: BadRequest) -> str:
    """The field a semantic error names (``_schema`` when it names none), for 422-by-index reports."""
    return getattr(error, "field", None) or "_schema"
