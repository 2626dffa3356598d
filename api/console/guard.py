"""Who is using the console, and what they may do: the sign-in cookie, CSRF tokens and scopes.

The cookie holds the API key itself (HttpOnly, SameSite=Strict, ``Secure`` over HTTPS, path ``/ui``): every
request reads the key's row by its digest exactly as an API request does (``api.access``), so a revoked key
is signed out at its next click and no server-side secret or session store is needed. An action (any POST)
must carry the CSRF token of the signed-in key, an HMAC of a fixed label under the key; the sign-in form
carries a random token that must match a cookie set with the form (double submit), so that no other site
can sign a browser in with a key of its choosing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import g, redirect, request, url_for

from api.access import BAD_KEY
from api.context import get_session, services
from api.gate import form_body
from shared.apikeys import Principal, key_digest, read_key
from shared.clock import utcnow
from shared.errors import Forbidden, Unauthorized

COOKIE = "sluice_console"
SIGN_IN_COOKIE = "sluice_console_sign_in"
COOKIE_PATH = "/ui"
CSRF_FIELD = "csrf_token"
_CSRF_LABEL = b"sluice console csrf v1"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Visitor:
    """The signed-in key's principal and the CSRF token its forms carry."""

    principal: Principal
    csrf_token: str

    def can(self, scope: str) -> bool:
        return self.principal.has_scope(scope)


def csrf_token_of(key: str) -> str:
    return hmac.new(key.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def principal_of_key(key: str) -> Principal:
    """The principal of a presented key, as ``api.access`` decides it (401 unknown, malformed or revoked)."""
    digest = key_digest(key)
    if digest is None:
        raise Unauthorized(BAD_KEY)
    session = get_session()
    try:
        return services().access.identify(session, read_key(session, digest), utcnow())
    finally:
        if session.info.pop("wrote_last_used_at", False):
            session.commit()


def current_visitor() -> Visitor:
    return g.console_visitor  # type: ignore[no-any-return]


def _same_token(sent: str | None, expected: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


def console_page(scope: str | None) -> Callable[[F], F]:
    """Sign-in, CSRF (on POST) and ``scope`` for one console view; the API's rate limit applies too.

    Without a valid key cookie the browser goes to the sign-in page (and back afterwards); a key without
    ``scope`` gets the console's 403 page naming the scope."""

    def wrap(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            key = request.cookies.get(COOKIE, "")
            try:
                principal = principal_of_key(key)
            except Unauthorized:
                target = request.full_path if request.method == "GET" else url_for("console.jobs_page")
                response = redirect(url_for("console.sign_in_page", next=target.rstrip("?")))
                if key:
                    response.delete_cookie(COOKIE, path=COOKIE_PATH)
                return response
            visitor = g.console_visitor = Visitor(principal, csrf_token_of(key))
            if request.method == "POST" and not _same_token(request.form.get(CSRF_FIELD), visitor.csrf_token):
                raise Forbidden("The form's CSRF token is missing or stale; reload the page and try again")
            permit = services().access.permit(principal, scope, utcnow())
            if permit.refusal is not None:
                raise permit.refusal
            return view(*args, **kwargs)

        return form_body(guarded)  # type: ignore[no-any-return]

    return wrap


def sign_in_token() -> str:
    """The double-submit token of the sign-in form: the one in the browser's cookie, or a new one."""
    token = request.cookies.get(SIGN_IN_COOKIE)
    return token if token and len(token) == 43 else secrets.token_urlsafe(32)


def sign_in_token_matches() -> bool:
    cookie = request.cookies.get(SIGN_IN_COOKIE)
    return cookie is not None and _same_token(request.form.get(CSRF_FIELD), cookie)


def set_cookie(response: Any, name: str, value: str) -> None:
    response.set_cookie(name, value, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.is_secure)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith(COOKIE_PATH + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("console.jobs_page")
