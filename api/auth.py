"""Bearer API-key authentication, scopes and the optional per-key API rate limit (CONTRACT §9, §1.5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request
from sqlalchemy.orm import Session

from api.context import get_session, services
from shared import redis_keys
from shared.apikeys import Principal, authenticate_digest, key_digest, principal_from_row
from shared.clock import utcnow
from shared.errors import Forbidden, TooManyRequests, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])
_BAD_KEY = "Unknown, malformed or revoked API key"


def requires_scope(scope: str) -> Callable[[F], F]:
    """Declare the scope a view needs; checked before the body is read (precedence §1.5)."""

    def mark(view: F) -> F:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


def authenticated_with(lookup: Callable[[Session, str, str], Any]) -> Callable[[F], F]:
    """Authenticate this job-scoped view with ``lookup(session, key_digest, job_ref)``: one statement that
    returns the key row (``shared.apikeys.KEY_FIELDS``) joined with the view's job lookup, saving a round
    trip. The view reads its half with ``prefetched_row()``; precedence is unchanged (a missing job is
    still the view's 404, after 401/403/413/415/400/422)."""

    def mark(view: F) -> F:
        view.key_lookup = lookup  # type: ignore[attr-defined]
        return view

    return mark


def prefetched_with_key(prefetch: Callable[[Session, str], tuple[Any, Any] | None]) -> Callable[[F], F]:
    """Authenticate this view with ``prefetch(session, key_digest)``: ``(key row mapping or None, data)``
    read in one statement, the data for the view (``prefetched_row()``), or ``None`` when the request is not
    of the kind it prefetches for (then the key is read alone). The view must check the data is for what it
    is about to read; precedence is unchanged."""

    def mark(view: F) -> F:
        view.key_prefetch = prefetch  # type: ignore[attr-defined]
        return view

    return mark


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None`` when it is not one."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authenticate_request(scope: str | None, view: Any = None) -> Principal:
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        raise Unauthorized("Missing or malformed Authorization header; send 'Bearer sk_…'")
    digest = key_digest(token)
    if digest is None:
        raise Unauthorized(_BAD_KEY)
    session = get_session()
    lookup = getattr(view, "key_lookup", None)
    ref = (request.view_args or {}).get("job") if lookup is not None else None
    prefetch = getattr(view, "key_prefetch", None)
    fetched = prefetch(session, digest) if prefetch is not None else None
    if fetched is not None:
        key_row, g.prefetched_row = fetched
        principal = principal_from_row(session, key_row, utcnow())
    elif lookup is not None and ref is not None:
        row = lookup(session, digest, ref)
        g.prefetched_row = row
        principal = principal_from_row(session, None if row is None else getattr(row, "_mapping", row), utcnow())
    else:
        principal = authenticate_digest(session, digest, utcnow())
    if session.info.pop("wrote_last_used_at", False):
        session.commit()  # persist the throttled last_used_at even if the view fails
    # Otherwise the view continues on the same connection: no commit, no second pool checkout.
    if principal is None:
        raise Unauthorized(_BAD_KEY)
    g.principal = principal
    if scope is not None and not principal.has_scope(scope):
        raise Forbidden(f"missing scope {scope}")
    _apply_api_rate_limit(principal)
    return principal


def prefetched_row() -> Any:
    """The row the view's ``@authenticated_with`` lookup (or the data its ``@prefetched_with_key``
    prefetch) returned alongside the key; ``None`` if none was read."""
    return g.get("prefetched_row")


def _apply_api_rate_limit(principal: Principal) -> None:
    limit = services().settings.api_rate_limit
    if limit is None:
        return
    count, window = limit
    now = int(time.time())
    window_start = now - now % window
    key = redis_keys.api_rate(principal.key_id, window_start)
    pipe = services().redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, window + 1)
    used = pipe.execute()[0]
    if used > count:
        raise TooManyRequests(retry_after_secs=window_start + window - now or 1,
                              message=f"API rate limit of {count} requests per {window} s exceeded")


def current_principal() -> Principal:
    principal = g.get("principal")
    if principal is None:  # a view without authentication is a programming error
        current_app.logger.error("view reached without a principal")
        raise Unauthorized()
    return principal


def check_project(project_id: Any) -> None:
    """403 when a body or query ``project_id`` names another project (§9.3)."""
    if project_id is not None and project_id != current_principal().project_id:
        raise Forbidden("project_id does not match the API key's project")
