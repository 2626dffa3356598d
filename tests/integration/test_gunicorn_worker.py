"""``api.gunicorn_worker``: keep-alive connections opened together spread evenly over gunicorn's processes
instead of piling onto whichever process was awake (plain gthread gave 2/14 or 3/13 of 16 here)."""

from __future__ import annotations

import collections
import http.client
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.process_support import free_port, is_listening

REPO = Path(__file__).resolve().parents[2]


def pid_app(_environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answers with the serving process's id."""
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def _serve(workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", "4",
         "--worker-class", "api.gunicorn_worker.BalancedThreadWorker", "--keep-alive", "30",
         "tests.integration.test_gunicorn_worker:pid_app"], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not is_listening(port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("gunicorn did not start")
        time.sleep(0.1)
    time.sleep(0.5)  # every worker process up and polling
    return process, port


def _pids_of_connections(port: int, count: int) -> collections.Counter[bytes]:
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(count)]
    for connection in connections:  # all connected before the first request, like a client pool
        connection.connect()
    pids: collections.Counter[bytes] = collections.Counter()
    for _ in range(2):  # the same connection stays with its process
        for connection in connections:
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 200
            pids[response.read()] += 1
    for connection in connections:
        connection.close()
    return pids


@pytest.mark.parametrize("workers", [2, 1])
def test_connections_spread_over_the_processes(workers: int) -> None:
    process, port = _serve(workers)
    try:
        counts = sorted(_pids_of_connections(port, 16).values())
    finally:
        process.terminate()
        process.wait(timeout=30)
    if workers == 1:  # no sibling: accepted at once, beyond the thread count too
        assert counts == [32]
    else:
        assert len(counts) == 2 and counts[0] >= 12, counts  # 16 connections x 2 requests: at most 20/12
