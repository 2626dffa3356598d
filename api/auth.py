"""Flask's side of authentication (``api.access``): the scope a view declares, the key read its request
makes (alone, or with the view's job in one statement), the principal the view acts as."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request
from sqlalchemy.orm import Session

from api.access import presented_digest
from api.context import get_session, services
from shared.apikeys import Principal, read_key
from shared.clock import utcnow
from shared.errors import Forbidden, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


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


def authenticate_request(scope: str | None, view: Any = None) -> Principal:
    """401, 403 or 429 (``api.access``), else the request's principal (``current_principal()``)."""
    digest = presented_digest(request.headers.get("Authorization", ""))
    session = get_session()
    lookup = getattr(view, "key_lookup", None)
    ref = (request.view_args or {}).get("job") if lookup is not None else None
    if ref is not None:
        row = g.prefetched_row = lookup(session, digest, ref)  # type: ignore[misc]
        key = None if row is None else getattr(row, "_mapping", row)
    else:
        key = read_key(session, digest)
    access = services().access
    try:
        principal = g.principal = access.identify(session, key, utcnow())
    finally:
        # Persist the throttled last_used_at even if the request is refused or its view fails; otherwise
        # the view continues on the same connection: no commit, no second pool checkout.
        if session.info.pop("wrote_last_used_at", False):
            session.commit()
    permit = access.permit(principal, scope, utcnow())
    if permit.refusal is not None:
        raise permit.refusal
    return principal


def prefetched_row() -> Any:
    """The row the view's ``@authenticated_with`` lookup returned alongside the key; ``None`` if none."""
    return g.get("prefetched_row")


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
