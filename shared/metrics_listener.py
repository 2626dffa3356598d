"""The HTTP listener of the worker and the scheduler: ``/metrics`` (Prometheus text) and ``/healthz``.

``/healthz`` answers 200 ``{"status": "ok"}`` while the process's own check passes (the worker's supervisor
loop is turning, the scheduler's service threads are alive) and 503 ``{"status": "unhealthy"}`` otherwise,
so a container platform can restart a stuck process; it touches neither PostgreSQL nor Redis, so an outage
of either never restarts every process at once. Any other path is a 404.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HealthCheck = Callable[[], bool]


class Heartbeat:
    """A loop calls ``beat()`` on every pass; ``fresh()`` says whether it did within ``max_age_secs``."""

    def __init__(self, max_age_secs: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age_secs
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def fresh(self) -> bool:
        return self._clock() - self._last <= self._max_age


def _always() -> bool:
    return True


def serve(port: int, exposition: Callable[[], bytes], content_type: str, health: HealthCheck = _always,
          addr: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the listener on a daemon thread and return the server (``shutdown()`` stops it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, exposition(), content_type)
            elif path == "/healthz":
                ok = _passes(health)
                body = json.dumps({"status": "ok" if ok else "unhealthy"}).encode()
                self._answer(200 if ok else 503, body, "application/json")
            else:
                self._answer(404, json.dumps({"status": "not found"}).encode(), "application/json")

        def _answer(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes and scrapes: no log line
            return

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True).start()
    return server


def _passes(health: HealthCheck) -> bool:
    try:
        return bool(health())
    except Exception:
        return False
