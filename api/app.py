"""The Flask application factory: ``create_app(settings)`` builds everything; nothing runs at import."""

from __future__ import annotations

from typing import Any

import flask_smorest
from flask import Flask, g
from webargs import core
from webargs.flaskparser import FlaskParser

from api import console, docs_assets, front, gate, metrics, openapi_document, request_log, service
from api.access import Access
from api.context import Services, autocommit_read_factory, close_session
from api.errors import handle_http_exception, register_error_handlers
from api.forwarded import ForwardedHeaders
from api.resources import ERROR
from api.schemas.resources import schema_of
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.db.schema_version import ShippedSchema
from shared.messages.broker import make_broker
from shared.redis_client import make_redis


class _BodyParser(FlaskParser):
    """Reads the body parsed once by ``api.gate`` (g.body) instead of parsing JSON again."""

    def _raw_load_json(self, req: Any) -> Any:
        body = g.get("body")
        return core.missing if body is None else body


class SluiceApi(flask_smorest.Api):
    ERROR_SCHEMA = schema_of(ERROR)
    ARGUMENTS_PARSER = _BodyParser()

    def handle_http_exception(self, error: Any) -> Any:
        return handle_http_exception(error)


def _openapi_config(app: Flask) -> None:
    app.config.update(
        API_TITLE="Sluice",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=docs_assets.ASSETS_URL,
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearerAuth": []}],
            "info": {"description": openapi_document.DESCRIPTION},
        },
    )


def create_app(settings: Settings) -> Flask:
    """Build the API over PostgreSQL and Redis as ``settings`` name them: two connection pools (writes, and
    reads in autocommit), both preparing their hot statements, the broker, and the front layer. Without a
    secret key (``Settings.secret_box``) there is no API: it could not store a webhook secret."""
    settings.secret_box  # noqa: B018 -- ConfigError at start, not at the first job with a secret
    app = Flask("sluice", static_folder=None)  # no static route: nothing on disk is served without a key
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["sluice"] = services = _services(settings)
    _openapi_config(app)
    api = SluiceApi(app, spec_kwargs={"extra_plugins": [openapi_document.DocumentPlugin()]})
    register_error_handlers(app)
    gate.install(app)
    app.teardown_appcontext(close_session)
    service.install(app)
    metrics.install(app)
    docs_assets.install(app)
    request_log.install(app)
    _register_blueprints(api)
    console.install(app)
    service.document(app, api.spec)
    app.wsgi_app = front.install(services, app.wsgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxies:  # around the front layer: it builds URLs from the request too
        app.wsgi_app = ForwardedHeaders(app.wsgi_app, settings.trusted_proxies)  # type: ignore[method-assign]
    if settings.api_metrics_port is not None:
        app.wsgi_app = metrics.metrics_port_only(  # type: ignore[method-assign,assignment]
            settings.api_metrics_port, app.wsgi_app)
    return app


def _services(settings: Settings) -> Services:
    # Pre-ping: after PostgreSQL restarts (or a backend is terminated), a stale pooled connection is
    # replaced at checkout instead of failing a request with 503.
    pool = settings.worker_threads + 2
    timeout = settings.api_statement_timeout_secs or None
    engine = make_engine(settings.database_url, pool_size=pool, statement_timeout_secs=timeout)
    read_engine = make_engine(settings.database_url, pool_size=pool, statement_timeout_secs=timeout)
    client = make_redis(settings.redis_url)
    return Services(settings=settings, engine=engine, session_factory=make_session_factory(engine),
                    read_engine=read_engine, read_session_factory=autocommit_read_factory(read_engine),
                    redis=client, broker=make_broker(settings), access=Access(settings.api_rate_limit, client),
                    shipped_schema=ShippedSchema.load())


def _register_blueprints(api: flask_smorest.Api) -> None:
    from api import dependencies, job_health, job_versions, jobs, runs, triggers

    for module in (jobs, job_versions, dependencies, job_health, triggers, runs):
        api.register_blueprint(module.blp)
