"""``GET /metrics`` (Prometheus text, no key): request counts and latency per route, plus gauges
sampled from Redis and the database at most once per ``SLUICE_METRICS_GAUGE_SECS``. Every label comes from
a fixed set: methods outside ``METHODS`` count as ``other``, paths that match no route as ``<unmatched>``.

With ``SLUICE_API_METRICS_PORT`` set, ``sluice api`` also listens on that port, which serves ``/metrics``
and nothing else, and the public port no longer serves ``/metrics`` (``metrics_port_only``).

Families are defined in ``shared.metrics``. Under gunicorn (``api.server``) the samples of every worker
process are merged through prometheus_client's multiprocess directory; the scrape-time gauges are
computed by the process that serves the scrape, so they are never double counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, current_app, g, request
from prometheus_client.core import GaugeMetricFamily

from api.context import Services
from api.errors import error_body
from api.gate import request_id_for
from shared import json_codec, redis_keys
from shared.clock import utcnow
from shared.db.models import Run
from shared.messages.layout import DISPATCH_QUEUE, WEBHOOK_QUEUE
from shared.messages.queue_state import ready_messages
from shared.metrics import (
    ACTIVE_RUNS,
    CONTENT_TYPE,
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS,
    JOB_SLOTS_IN_USE,
    OLDEST_OVERDUE_DELAYED_RUN_AGE,
    OLDEST_READY_RUN_AGE,
    QUEUE_DEPTH,
    GaugeSpec,
    exposition,
)
from shared.runs.status import ACTIVE

log = logging.getLogger("sluice.api.metrics")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

METRICS_PATH = "/metrics"
UNMATCHED_ROUTE = "<unmatched>"  # 404/405: the raw path would explode the label's cardinality
# The HTTP methods counted by name; any other (servers accept invented ones) is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
MAX_SLOT_JOBS = 1000  # jobs reported in sluice_job_slots_in_use (those with executing runs, most first)


def route_label() -> str:
    """The request's URL rule (``/v1/jobs/<job_ref>``), never the raw path."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


# (method, route, status) → the two labelled children: ``labels()`` costs a lock and a tuple build per
# call, and the label sets are few (routes × methods × statuses).
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _record_request(response: Response) -> Response:
    record_request(request.method, route_label(), response.status_code, g.get("started"))  # started: api.gate
    return response


def record_request(method: str, route: str, status: int, started: float | None) -> None:
    """Count the request and observe its latency; ``started`` is its ``time.perf_counter()`` at arrival."""
    duration = time.perf_counter() - started if started is not None else 0.0
    key = (method if method in METHODS else OTHER_METHOD, route, status)
    children = _children.get(key)
    if children is None:
        children = _children.setdefault(key, (HTTP_REQUESTS.labels(key[0], key[1], str(key[2])),
                                              HTTP_REQUEST_DURATION.labels(key[0], key[1])))
    children[0].inc()
    children[1].observe(max(duration, 0.0))


def _family(spec: GaugeSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.documentation, labels=list(spec.labels))


class RunGauges:
    """A prometheus_client collector: queue depth, oldest ready and overdue delayed runs, active runs, slots.

    The gauges are sampled at most once per ``interval_secs`` (``SLUICE_METRICS_GAUGE_SECS``): scrapes in
    between get the last sample, so scraping often (or by anyone: ``/metrics`` needs no key) costs the
    database and Redis nothing more. Each source is sampled independently; one that is unreachable is left
    out of that sample (and logged) so ``/metrics`` keeps answering while Redis or the database is down.
    """

    def __init__(self, svc: Services, clock: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._svc = svc
        self._clock = clock
        self._monotonic = monotonic
        self._interval_secs = svc.settings.metrics_gauge_secs
        self._lock = threading.Lock()
        self._sampled_at: float | None = None
        self._families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = self._monotonic()
            if self._sampled_at is None or now - self._sampled_at >= self._interval_secs:
                self._families = self._sample()
                self._sampled_at = now
            families = self._families
        yield from families

    def _sample(self) -> list[GaugeMetricFamily]:
        families: list[GaugeMetricFamily] = []
        busy_jobs: list[str] = []
        redis_up = self._add(families, "queue_depth", self._queue_depth)
        database_up = self._add(families, "database_gauges", lambda: self._database_gauges(busy_jobs))
        if redis_up and database_up:
            self._add(families, "slots_in_use", lambda: self._slots_in_use(busy_jobs))
        return families

    @staticmethod
    def _add(families: list[GaugeMetricFamily], name: str, sample: Callable[[], list[GaugeMetricFamily]]) -> bool:
        try:
            families.extend(sample())
        except Exception as exc:  # a scrape must not fail because one source is down
            log.warning("metrics source unavailable", extra={"gauge": name, "error": type(exc).__name__})
            return False
        return True

    def _queue_depth(self) -> list[GaugeMetricFamily]:
        family = _family(QUEUE_DEPTH)
        for queue in (DISPATCH_QUEUE, WEBHOOK_QUEUE):
            family.add_metric([queue], ready_messages(self._svc.broker, queue))
        return [family]

    def _database_gauges(self, busy_jobs: list[str]) -> list[GaugeMetricFamily]:
        """The database's gauges; fills ``busy_jobs`` with the jobs that have executing runs."""
        statuses = sorted(ACTIVE)
        # One round trip; each count is served by the status's partial index.
        counts = [sa.select(sa.func.count()).select_from(Run).where(Run.status == s.value).scalar_subquery()
                  for s in statuses]
        now = self._clock()
        oldest = sa.select(sa.func.min(Run.queued_at)).where(Run.status == "queued").scalar_subquery()
        overdue = (sa.select(sa.func.min(Run.due_at)).where(Run.status == "delayed", Run.due_at <= now)
                   .scalar_subquery())
        executing = (sa.select(Run.job_id).where(Run.status == "executing").group_by(Run.job_id)
                     .order_by(sa.func.count().desc()).limit(MAX_SLOT_JOBS))
        with self._svc.session_factory() as session:
            row = session.execute(sa.select(oldest, overdue, *counts)).one()
            busy_jobs.extend(session.scalars(executing))
        families = []
        for spec, since in ((OLDEST_READY_RUN_AGE, row[0]), (OLDEST_OVERDUE_DELAYED_RUN_AGE, row[1])):
            family = _family(spec)
            family.add_metric([], _seconds_since(since, now))
            families.append(family)
        active = _family(ACTIVE_RUNS)
        for status, count in zip(statuses, row[2:], strict=True):
            active.add_metric([status.value], int(count or 0))
        families.append(active)
        return families

    def _slots_in_use(self, job_ids: list[str]) -> list[GaugeMetricFamily]:
        """Unexpired leases of the jobs that have executing runs: one pipelined ZCOUNT each, one round trip
        (never a keyspace SCAN)."""
        family = _family(JOB_SLOTS_IN_USE)
        if not job_ids:
            return [family]
        now_ms = int(self._clock().timestamp() * 1000)
        pipe = self._svc.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.zcount(redis_keys.concurrency_job(job_id), f"({now_ms}", "+inf")
        for job_id, in_use in zip(job_ids, pipe.execute(), strict=True):
            if in_use:
                family.add_metric([job_id], int(in_use))
        return [family]


def _seconds_since(value: datetime | None, now: datetime) -> float:
    """``now - value`` in seconds, never negative; 0 for ``None``."""
    if value is None:
        return 0.0
    return max((now - value).total_seconds(), 0.0)


def metrics_view() -> Response:
    body = exposition([current_app.extensions["sluice_metrics"]])
    return Response(body, status=200, headers={"Content-Type": CONTENT_TYPE})


def metrics_port_only(port: int, app: WsgiApp) -> WsgiApp:
    """Serve ``/metrics`` only on the listener bound to ``port``, and only ``/metrics`` there.

    The listener is told by the connection's local address (gunicorn's ``gunicorn.socket``), never by the
    ``Host`` header a client chooses. Anything else on either side is a 404 in the one error shape.
    """
    def split(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (_local_port(environ) == port) == (environ.get("PATH_INFO") == METRICS_PATH):
            return app(environ, start_response)
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        body = json_codec.dumps(error_body(404, "Not found", request_id))
        start_response("404 NOT FOUND", [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(body))), ("X-Request-Id", request_id)])
        return [body]

    return split


def _local_port(environ: dict[str, Any]) -> int | None:
    sock = environ.get("gunicorn.socket")
    try:
        return int(sock.getsockname()[1]) if sock is not None else None
    except (OSError, IndexError, TypeError, ValueError):
        return None


def install(app: Flask) -> None:
    """Count every request (after_request) and serve ``/metrics``; call once from ``create_app``."""
    app.extensions["sluice_metrics"] = RunGauges(app.extensions["sluice"])
    app.after_request(_record_request)
    app.add_url_rule(METRICS_PATH, "metrics", metrics_view, methods=["GET"])
