"""What a container platform sees of each process: ``sluice api`` writes only JSON lines (gunicorn's own
included), no access log beside the request log, no control socket under ``$HOME``, and with
``SLUICE_API_METRICS_PORT`` serves ``/metrics`` on that port only; ``sluice worker`` and ``sluice scheduler``
answer ``/healthz`` and ``/metrics`` on their metrics port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_key, pg_url, redis_url
from tests.integration.process_support import call, free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([str(BIN / "sluice"), *args], env=env, stdin=subprocess.DEVNULL,
                               stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_for(url: str, process: subprocess.Popen[bytes], log_path: Path, status: int = 200) -> None:
    deadline = time.monotonic() + 60
    while call("GET", url)[0] != status:
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)


def base_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    drop = {"DATABASE_URL", "REDIS_URL", "PORT", "PROMETHEUS_MULTIPROC_DIR", "SLUICE_METRICS_PORT",
            "SLUICE_API_BIND", "GUNICORN_CMD_ARGS", "XDG_RUNTIME_DIR", "SLUICE_LOG_JSON"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(DATABASE_URL=pg_url(), REDIS_URL=redis_url(), HOME=str(home), SLUICE_LOG_LEVEL="INFO")
    return env


def test_api_logs_json_only_and_serves_metrics_on_its_own_port(tmp_path: Path, session_factory) -> None:  # type: ignore[no-untyped-def]
    port, metrics_port = free_port(), free_port()
    env = base_env(tmp_path)
    env.update(PORT=str(port), SLUICE_API_METRICS_PORT=str(metrics_port), SLUICE_API_WORKERS="2")
    key = make_key(session_factory, "proj-listeners")
    log_path = tmp_path / "api.log"
    api, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    with started(["api"], env, log_path) as process:
        wait_for(f"{api}/healthz", process, log_path)
        status, _ = call("GET", f"{api}/v1/jobs?limit=5&secret_marker=q1", key)
        assert status == 200
        status, text = call("GET", f"{metrics}/metrics")
        assert status == 200 and "sluice_http_requests_total" in text
        assert call("GET", f"{api}/metrics")[0] == 404  # not on the public port
        status, body = call("GET", f"{metrics}/v1/jobs", key)
        assert status == 404 and body["code"] == 404 and body["request_id"]  # the metrics port serves nothing else
        status, body = call("GET", f"{metrics}/healthz")
        assert status == 404
        time.sleep(0.5)  # let the last lines reach the log
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    loggers = {entry.get("logger") for entry in parsed}
    assert "gunicorn.error" in loggers, loggers  # gunicorn's own start and boot lines, as JSON
    assert not any("secret_marker" in line for line in lines), "a line repeats the query string"
    requests = [e for e in parsed if e.get("path") == "/v1/jobs" and e.get("status") == 200]
    assert len(requests) == 1, requests  # the request log's one line, no access log beside it
    home = Path(env["HOME"])
    assert not (home / ".gunicorn").exists() and not list(home.iterdir()), list(home.iterdir())


@pytest.mark.parametrize("args", [["scheduler"], ["worker", "--processes", "2", "--threads", "2"]])
def test_worker_and_scheduler_answer_healthz_on_their_metrics_port(tmp_path: Path, db_engine, redis_client,  # type: ignore[no-untyped-def]
                                                                   args: list[str]) -> None:
    metrics_port = free_port()
    env = base_env(tmp_path)
    env["SLUICE_METRICS_PORT"] = str(metrics_port)
    log_path = tmp_path / "process.log"
    base = f"http://127.0.0.1:{metrics_port}"
    with started(args, env, log_path) as process:
        wait_for(f"{base}/healthz", process, log_path)
        status, body = call("GET", f"{base}/healthz")
        assert (status, body) == (200, {"status": "ok"})
        status, text = call("GET", f"{base}/metrics")  # a worker's children may not have recorded a sample yet
        assert status == 200 and (args[0] == "worker" or "sluice_schedule_lag_seconds" in text)
        assert call("GET", f"{base}/nothing-here")[0] == 404


def test_healthz_fails_while_the_process_check_fails() -> None:
    from shared.metrics_listener import Heartbeat, serve

    now = [0.0]
    heartbeat = Heartbeat(30.0, clock=lambda: now[0])
    port = free_port()
    server = serve(port, lambda: b"", "text/plain", health=heartbeat.fresh, addr="127.0.0.1")
    try:
        assert call("GET", f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        now[0] = 31.0  # the loop stopped turning
        assert call("GET", f"http://127.0.0.1:{port}/healthz") == (503, {"status": "unhealthy"})
        heartbeat.beat()
        assert call("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
