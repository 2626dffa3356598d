"""The web console at ``/ui``: server-rendered pages over the same domain functions as the API.

Signed in with an API key kept in an HttpOnly, SameSite=Strict cookie (``api.console.guard``); every page
and action is authorised by ``api.access`` like an API request of the same key, and reads and writes only
through ``shared``'s domain functions, so the console can do nothing the key could not do over the API.
"""

from __future__ import annotations

from flask import Flask


def install(app: Flask) -> None:
    """Register the console's blueprint (its pages, templates and vendored assets)."""
    from api.console import dead_letters, fleet, job_page, jobs, run_page, runs, sign_in  # noqa: F401
    from api.console.blueprint import blp

    app.register_blueprint(blp)
