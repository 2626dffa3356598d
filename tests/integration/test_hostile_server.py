"""A real ``sluice api`` (gunicorn, 2 processes x 8 threads) under hostile requests keeps answering others.

Hostile clients loop on: payloads against a backtracking pattern and against a schema that needs its whole
time budget, NUL in paths and cursors, bodies nested near the interpreter's limit, invented methods, pages
of megabyte runs. Each is refused or bounded (4xx, or a page cut short), never a 5xx; meanwhile plain
requests from another client are answered within a second each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pg_url, redis_url
from tests.integration.process_support import free_port, is_listening

REPO = Path(__file__).resolve().parents[2]
SLOW_SCHEMA = {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer"}},
                                          "required": ["a"]}, "uniqueItems": True}


@pytest.fixture()
def api_url(db_engine, redis_client, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {**os.environ, "DATABASE_URL": pg_url(), "REDIS_URL": redis_url(), "SLUICE_API_BIND": f"127.0.0.1:{port}",
           "SLUICE_API_WORKERS": "2", "SLUICE_API_THREADS": "8", "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "SLUICE_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-c", "import sys; from shared.cli.main import main; "
                                "sys.exit(main(['api']))"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not is_listening(port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("sluice api did not start")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _send(method: str, url: str, headers: dict[str, str], body: bytes | None = None,
          timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def test_the_api_answers_others_while_hostile_requests_are_refused_or_bounded(api_url, auth):
    headers = {**auth, "Content-Type": "application/json"}
    job = lambda slug, **fields: _send("POST", f"{api_url}/v1/jobs", headers, _json(  # noqa: E731
        {"name": slug, "slug": slug, "endpoint_url": "http://127.0.0.1:9/x", **fields}))
    assert job("evil", payload_schema={"type": "object", "properties": {"s": {"pattern": "^(a+)+$"}}})[0] == 201
    assert job("slow", payload_schema=SLOW_SCHEMA)[0] == 201
    assert job("heavy")[0] == 201
    assert job("plain")[0] == 201
    big = "x" * 900_000
    for _ in range(6):  # runs whose payloads make a page of megabytes
        assert _send("POST", f"{api_url}/v1/jobs/heavy/trigger", headers, _json({"payload": {"b": big}}))[0] == 201

    evil_payload = _json({"payload": {"s": "a" * 200_000 + "!"}})
    slow_payload = _json({"payload": [{"a": i} for i in range(80_000)]})
    assert len(slow_payload) < 1 << 20
    deep = b'{"payload": ' + b"[" * 990 + b"]" * 990 + b"}"
    hostile = [
        ("POST", "/v1/jobs/evil/trigger", evil_payload, {422}),
        ("POST", "/v1/jobs/slow/trigger", slow_payload, {422, 201}),
        ("POST", "/v1/jobs/plain/trigger", deep, {400}),
        ("GET", "/v1/jobs/a%00b", None, {400}),
        ("GET", "/v1/runs?cursor=%00", None, {400}),
        ("BREW", "/v1/jobs", None, {400, 405, 501}),
        ("GET", "/v1/runs?limit=200", None, {200}),
    ]
    statuses: dict[str, set[int]] = {}
    page_sizes: list[int] = []
    stop = threading.Event()
    errors: list[str] = []

    def attack(offset: int) -> None:
        index = offset
        while not stop.is_set():
            method, path, body, expected = hostile[index % len(hostile)]
            index += 1
            try:
                status, data = _send(method, api_url + path, headers, body)
            except Exception as exc:
                errors.append(f"{method} {path}: {exc!r}")
                continue
            statuses.setdefault(path, set()).add(status)
            if status not in expected:
                errors.append(f"{method} {path}: {status} {data[:200]!r}")
            if path.startswith("/v1/runs?limit"):
                page_sizes.append(len(data))

    attackers = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(6)]
    for thread in attackers:
        thread.start()
    time.sleep(2.0)  # the storm is on
    latencies = []
    try:
        for i in range(15):
            started = time.monotonic()
            status, _ = _send("GET", f"{api_url}/v1/jobs/plain", auth, timeout=10)
            assert status == 200
            status, _ = _send("POST", f"{api_url}/v1/jobs/plain/trigger", headers, _json({"payload": {"i": i}}),
                              timeout=10)
            assert status == 201
            latencies.append((time.monotonic() - started) / 2)
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=60)
    assert not errors, errors[:5]
    assert max(latencies) < 1.0, latencies
    assert {"/v1/jobs/evil/trigger", "/v1/jobs/plain/trigger", "/v1/jobs/a%00b"} <= set(statuses)
    assert page_sizes and max(page_sizes) < 7 * 1024 * 1024  # 6 runs of 900 KB payloads, cut at 4 MiB
