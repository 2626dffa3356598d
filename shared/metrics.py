"""Every Prometheus metric family Sluice exposes, defined once so all processes share names, help and labels.

Two kinds:

- **Event metrics** (counters, histograms) are incremented where the event happens, through the
  ``observe_*`` functions below, in whichever process that is (API, worker, scheduler).
- **Scrape-time gauges** (queue depth, oldest ready run, oldest overdue delayed run, slots in use, active
  runs) are sampled from Redis
  and the database when ``/metrics`` is scraped (``api.metrics``); only their specs live here.

The scheduler's ``sluice_schedule_lag_seconds`` gauge is defined in ``scheduler/metrics.py`` (it is
measured inside the scheduler loop); ``docs/operations.md`` lists every family.

Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before this module is first imported*,
prometheus_client writes samples to files in that directory and ``exposition`` merges every process's
files (gunicorn's worker processes, the worker's dramatiq processes). Without it a plain in-process
registry is used. Process launchers (``api.server``, ``worker.main``, ``sluice dev``) call
``prepare_multiprocess_dir`` before starting the processes that record samples.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shared import metrics_listener
from shared.errors import ConfigError
from shared.metrics_listener import HealthCheck

log = logging.getLogger("sluice.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PORT_ENV = "SLUICE_METRICS_PORT"
WORKER_METRICS_PORT = 9101
SCHEDULER_METRICS_PORT = 9102
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets: API calls are milliseconds; endpoint calls can take up to the 3600 s timeout cap.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ATTEMPT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

# ---- event metrics -------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "sluice_http_requests", "API requests, by method, route (the URL rule, not the raw path) and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "sluice_http_request_duration_seconds", "API request latency in seconds, by method and route.",
    ["method", "route"], buckets=_HTTP_BUCKETS,
)
RUNS_CREATED = Counter(
    "sluice_runs_created", "Runs created, by triggered_by (manual, cron, replay).", ["triggered_by"],
)
RUNS_FINISHED = Counter(
    "sluice_runs_finished", "Runs that reached a terminal status, by that status.", ["status"],
)
ATTEMPT_DURATION = Histogram(
    "sluice_attempt_duration_seconds",
    "Endpoint call attempts: wall time from the call's start to its recorded outcome, by outcome.",
    ["outcome"], buckets=_ATTEMPT_BUCKETS,
)
RUN_REDELAYS = Counter(
    "sluice_run_redelays", "Runs a worker put back to delayed without using an attempt, by reason "
    "(window, concurrency, rate_limit).", ["reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "sluice_webhook_deliveries", "Terminal-webhook delivery attempts, by outcome (delivered, retrying, "
    "abandoned, failed).", ["outcome"],
)


# ---- scrape-time gauges (sampled by api.metrics) -------------------------------------------------------

@dataclass(frozen=True)
class GaugeSpec:
    name: str
    documentation: str
    labels: tuple[str, ...] = ()


QUEUE_DEPTH = GaugeSpec(
    "sluice_queue_depth", "Messages waiting in a Redis queue, not yet fetched by a worker (LLEN "
    "dramatiq:<queue>).", ("queue",),
)
OLDEST_READY_RUN_AGE = GaugeSpec(
    "sluice_oldest_ready_run_age_seconds", "Age of the oldest queued run (now - min(queued_at)); 0 when none.",
)
OLDEST_OVERDUE_DELAYED_RUN_AGE = GaugeSpec(
    "sluice_oldest_overdue_delayed_run_seconds", "How long the most overdue delayed run has been due "
    "(now - min(due_at) of delayed runs already due); 0 when none. Grows when the scheduler's sweeper lags.",
)
JOB_SLOTS_IN_USE = GaugeSpec(
    "sluice_job_slots_in_use", "Unexpired concurrency leases held per job (jobs holding none are omitted).",
    ("job_id",),
)
ACTIVE_RUNS = GaugeSpec(
    "sluice_runs_active", "Runs in each non-terminal status (waiting, delayed, queued, executing).", ("status",),
)
SCRAPE_GAUGES = (QUEUE_DEPTH, OLDEST_READY_RUN_AGE, OLDEST_OVERDUE_DELAYED_RUN_AGE, JOB_SLOTS_IN_USE, ACTIVE_RUNS)


# ---- observe helpers (one call at the place the event happens) -----------------------------------------

def observe_runs_created(triggered_by: str, count: int = 1) -> None:
    """Count ``count`` new runs (call it once per insert batch, after the rows are written)."""
    if count > 0:
        RUNS_CREATED.labels(str(triggered_by)).inc(count)


def observe_runs_created_by(triggered_by_values: Iterable[str]) -> None:
    """Count one new run per value (a batch of inserted rows' ``triggered_by``)."""
    for triggered_by, count in collections.Counter(triggered_by_values).items():
        observe_runs_created(triggered_by, count)


def observe_run_finished(status: str) -> None:
    RUNS_FINISHED.labels(str(status)).inc()


def observe_attempt(outcome: str, duration_secs: float) -> None:
    ATTEMPT_DURATION.labels(str(outcome)).observe(max(duration_secs, 0.0))


def observe_redelay(reason: str) -> None:
    RUN_REDELAYS.labels(str(reason)).inc()


def observe_webhook_delivery(outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(str(outcome)).inc()


# ---- exposition ----------------------------------------------------------------------------------------

def is_multiprocess(env: Mapping[str, str] | None = None) -> bool:
    return bool((os.environ if env is None else env).get(MULTIPROC_ENV))


def prepare_multiprocess_dir(env: MutableMapping[str, str] | None = None) -> str:
    """Make sure ``PROMETHEUS_MULTIPROC_DIR`` names an existing directory; create a fresh one if unset.

    Call it in a launcher *before* starting (or importing prometheus_client in) the processes that record
    samples. A directory given by the operator is used as is, never emptied: it may be shared with
    processes that are still running (prometheus_client advises wiping it between deployments).
    """
    env = os.environ if env is None else env
    path = env.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="sluice-metrics-")
    os.makedirs(path, exist_ok=True)
    env[MULTIPROC_ENV] = path
    return path


class _Forward:
    """Adapts the default registry (plain mode) so it can be collected through a per-scrape registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Any]:
        return self._registry.collect()


def scrape_registry(extra_collectors: Iterable[Any] = ()) -> CollectorRegistry:
    """A registry holding this process's (or, in multiprocess mode, every process's) samples plus
    ``extra_collectors`` (scrape-time gauges). Built per scrape, so nothing global is re-registered."""
    registry = CollectorRegistry(auto_describe=False)
    if is_multiprocess():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))  # type: ignore[arg-type]
    for collector in extra_collectors:
        registry.register(collector)
    return registry


def exposition(extra_collectors: Iterable[Any] = ()) -> bytes:
    """The Prometheus text exposition of ``scrape_registry(extra_collectors)``."""
    return generate_latest(scrape_registry(extra_collectors))


def metrics_port(env: Mapping[str, str], default: int) -> int | None:
    """``SLUICE_METRICS_PORT`` (default ``default``); ``0`` disables the metrics listener."""
    raw = (env.get(METRICS_PORT_ENV) or "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{METRICS_PORT_ENV}: expected a port number, got {raw!r}") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"{METRICS_PORT_ENV}: must be 0..65535")
    return port or None


def expose_process_metrics(default_port: int, *, merge_children: bool = False,
                           env: MutableMapping[str, str] | None = None, health: HealthCheck | None = None) -> Any:
    """Serve this role's ``/metrics`` and ``/healthz`` (``health``: the process's liveness check; none =
    healthy while it answers) on ``SLUICE_METRICS_PORT`` (default ``default_port``; ``0`` = off).

    ``merge_children``: the caller is a supervisor whose child processes record the samples; they must
    be started after this call so they inherit ``PROMETHEUS_MULTIPROC_DIR``. A port already taken (two
    workers on one host) is logged and skipped rather than stopping the process. Returns the server or
    ``None``.
    """
    env = os.environ if env is None else env
    port = metrics_port(env, default_port)
    if merge_children:
        prepare_multiprocess_dir(env)
    if port is None:
        return None
    try:
        return serve_metrics(port, health=health)
    except OSError as exc:
        log.warning("metrics port unavailable; this process serves no metrics",
                    extra={"port": port, "error": str(exc)})
        return None


def serve_metrics(port: int, addr: str = "0.0.0.0", health: HealthCheck | None = None) -> Any:
    """Serve ``/metrics`` and ``/healthz`` for a worker or scheduler on a background thread; returns the
    server. In multiprocess mode each scrape merges every process's files in the shared directory."""
    registry = scrape_registry()
    return metrics_listener.serve(port, lambda: generate_latest(registry), CONTENT_TYPE,
                                  **({"health": health} if health is not None else {}), addr=addr)
