"""Signing in to the console with an API key, and signing out."""

from __future__ import annotations

from flask import Response, redirect, request

from api.console.blueprint import blp
from api.console.guard import (
    COOKIE,
    COOKIE_PATH,
    CSRF_FIELD,
    SIGN_IN_COOKIE,
    console_page,
    principal_of_key,
    safe_next,
    set_cookie,
    sign_in_token,
    sign_in_token_matches,
)
from api.console.rendering import page
from api.gate import form_body
from shared.errors import Unauthorized


def _form(status: int = 200, error: str | None = None) -> Response:
    token = sign_in_token()
    response = page("sign_in.html", status=status, error=error, token=token, csrf_field=CSRF_FIELD,
                    next=safe_next(request.values.get("next")))
    set_cookie(response, SIGN_IN_COOKIE, token)
    return response


@blp.route("/sign-in", methods=["GET"])
def sign_in_page() -> Response:
    return _form()


@blp.route("/sign-in", methods=["POST"])
@form_body
def sign_in() -> Response:
    """Check the key as an API request would; on success keep it in the console's cookie."""
    if not sign_in_token_matches():
        return _form(403, "The sign-in form expired; try again.")
    key = request.form.get("api_key", "").strip()
    try:
        principal_of_key(key)
    except Unauthorized:
        return _form(401, "Unknown, malformed or revoked API key.")
    response = redirect(safe_next(request.form.get("next")), code=303)
    set_cookie(response, COOKIE, key)
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return response  # type: ignore[return-value]


@blp.route("/sign-out", methods=["POST"])
@console_page(None)
def sign_out() -> Response:
    response = redirect("/ui/sign-in", code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response  # type: ignore[return-value]
