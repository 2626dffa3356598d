"""``/docs``: Swagger UI over ``/openapi.json``, its scripts and styles served by the API itself from the
copy in ``api/swagger_ui`` (see its VERSION file), so the page works without reaching any CDN."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, Response, abort, send_from_directory

ASSETS_DIR = Path(__file__).parent / "swagger_ui"
ASSETS_URL = "/docs/assets/"
ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"})
_CACHE_SECS = 86_400


def asset(name: str) -> Response:
    if name not in ASSETS:
        abort(404)
    return send_from_directory(ASSETS_DIR, name, max_age=_CACHE_SECS)


def install(app: Flask) -> None:
    """Serve the assets; ``OPENAPI_SWAGGER_UI_URL`` (``api.app``) points the /docs page at them."""
    app.add_url_rule(ASSETS_URL + "<name>", "docs_asset", asset, methods=["GET"])
