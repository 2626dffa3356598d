"""The example endpoint of ``sluice dev``: ``POST /echo`` answers with what it received.

A first job pointed at it completes without leaving the machine (no public host, works offline), and the
run's ``result`` shows what Sluice sent: the payload and the run id and attempt headers. ``?status=503``
(any 200-599) answers with that status instead, to watch retries and failures.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY_BYTES = 1 << 20
USAGE = {"usage": "POST a JSON body to /echo; the answer echoes it. ?status=503 answers with that status."}


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "sluice-dev-echo"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, MAX_BODY_BYTES)).decode("utf-8", "replace")
        try:
            received: Any = json.loads(raw) if raw else None
        except ValueError:
            received = raw
        status = self._requested_status()
        attempt = self.headers.get("X-Sluice-Attempt") or ""
        body = {"received": received, "run_id": self.headers.get("X-Sluice-Run-Id"),
                "attempt": int(attempt) if attempt.isdigit() else None}
        self._answer(status if status is not None else 200, body)

    def do_GET(self) -> None:
        self._answer(200, USAGE)

    def _requested_status(self) -> int | None:
        values = parse_qs(urlsplit(self.path).query).get("status", [])
        if values and values[0].isdigit() and 200 <= int(values[0]) <= 599:
            return int(values[0])
        return None

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass  # the run's events already tell what was called


class EchoEndpoint:
    """The echo server on a thread of the dev process, at ``url``."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._server = ThreadingHTTPServer((host, port), EchoHandler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/echo"
        self._thread = threading.Thread(target=self._server.serve_forever, name="echo", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
