"""The console's blueprint: pages under ``/ui``, templates and assets from this package (nothing from a CDN)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, redirect, url_for

from api.console.rendering import page, register_filters
from shared.errors import SluiceError, TooManyRequests

blp = Blueprint("console", __name__, url_prefix="/ui", template_folder="templates", static_folder="static",
                static_url_path="/static")
blp.record_once(lambda state: register_filters(state.app))  # type: ignore[arg-type]


@blp.errorhandler(SluiceError)
def _refused(error: SluiceError) -> Any:
    """A refusal of a page or an action, as a page in the console (the API's status, message and, for a
    429, ``Retry-After``)."""
    response = page("error.html", status=error.status_code, code=error.status_code, message=error.message,
                    errors=getattr(error, "errors", None))
    if isinstance(error, TooManyRequests):
        response.headers["Retry-After"] = str(error.retry_after_secs)
    return response


@blp.route("/", methods=["GET"])
def home() -> Response:
    return redirect(url_for("console.jobs_page"))  # type: ignore[return-value]


@blp.after_request
def _headers(response: Response) -> Response:
    """No script, style or frame from anywhere else; never framed (clickjacking); never cached."""
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "style-src-attr 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'; "
                                "base-uri 'none'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not response.headers.get("Cache-Control"):
        response.headers["Cache-Control"] = "no-store"
    return response
