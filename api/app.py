"""The Flask application factory: ``create_app(settings)`` builds everything; nothing runs at import."""

from __future__ import annotations

from typing import Any

import flask_smorest
import redis
from flask import Flask, g
from webargs import core
from webargs.flaskparser import FlaskParser

from api import gate, metrics, request_log, service
from api.context import Services, autocommit_read_factory, close_session
from api.errors import ErrorSchema, handle_http_exception, register_error_handlers
from api.fast_job_get import FastJobGet
from api.fast_list import FastJobList
from api.fast_trigger import FastTrigger
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.db.prepared import enable_prepared_statements
from shared.messages import make_broker


class _BodyParser(FlaskParser):
    """Reads the body parsed once by ``api.gate`` (g.body) instead of parsing JSON again."""

    def _raw_load_json(self, req: Any) -> Any:
        body = g.get("body")
        return core.missing if body is None else body


class SluiceApi(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema
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
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/",
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearerAuth": []}],
            "info": {"description": "Sluice: HTTP job scheduler and trigger service. See CONTRACT.md."},
        },
    )


def create_app(settings: Settings, *, services: Services | None = None) -> Flask:
    """Build the API. ``services`` lets tests and ``sluice dev`` pass prebuilt engine/Redis/broker."""
    app = Flask("sluice")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if services is None:
        # No pre-ping: a dead pooled connection fails one request with 503 and SQLAlchemy then
        # invalidates the pool; pinging would cost a round trip on every request.
        pool = settings.worker_threads + 2
        engine = make_engine(settings.database_url, pool_size=pool, pre_ping=False)
        reads = None
        if engine.dialect.name == "postgresql":  # GETs get a pool of connections that stay in autocommit
            read_engine = make_engine(settings.database_url, pool_size=pool, pre_ping=False)
            reads = autocommit_read_factory(read_engine)
            enable_prepared_statements(read_engine)  # the trigger's key + job lookup (shared.triggers.manual)
        enable_prepared_statements(engine)
        client = redis.Redis.from_url(settings.redis_url)
        services = Services(settings=settings, engine=engine, session_factory=make_session_factory(engine),
                            redis=client, broker=make_broker(settings), read_session_factory=reads)
    app.extensions["sluice"] = services
    _openapi_config(app)
    api = SluiceApi(app)
    register_error_handlers(app)
    gate.install(app)
    app.teardown_appcontext(close_session)
    service.install(app)
    metrics.install(app)
    request_log.install(app)
    _register_blueprints(api)
    service.document(app, api.spec)
    # The lean paths in front of Flask: the common trigger, the plain jobs list and a job read.
    lean_reads = FastJobList(services, FastJobGet(services, app.wsgi_app))
    app.wsgi_app = FastTrigger(services, lean_reads)  # type: ignore[method-assign]
    return app


def _register_blueprints(api: flask_smorest.Api) -> None:
    from api import dependencies, job_health, job_versions, jobs, runs, triggers

    for module in (jobs, job_versions, dependencies, job_health, triggers, runs):
        api.register_blueprint(module.blp)
