"""``sluice dev`` end to end, as a new user runs it: no DATABASE_URL, no REDIS_URL, an empty directory.

Starts the real console script, reads the printed key, creates a job against a local endpoint, triggers
it, waits for ``completed``, then sends SIGINT and checks that every process dev started has exited.
Run once with the embedded Redis dev picks (``auto``: redis-server when installed) and once forcing
the fakeredis TCP server.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.process_support import (
    Sink,
    call,
    descendants,
    free_port,
    is_listening,
    is_running,
    sink_fixture,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
KEY_RE = re.compile(r"\bsk_[0-9a-f]{64}\b")
STARTUP_LIMIT_SECS = 60


def sluice_command() -> list[str]:
    """The installed console script (installed editable on first use), else the module entry."""
    script = Path(sys.executable).parent / "sluice"
    if not script.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-e", str(REPO), "--no-deps", "-q"],
                       check=False, timeout=300)
    return [str(script)] if script.exists() else [sys.executable, "-m", "shared.cli.main"]


class DevProcess:
    def __init__(self, cwd: Path, port: int, redis_kind: str | None) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "SLUICE_DEV_REDIS"}}
        if redis_kind:
            env["SLUICE_DEV_REDIS"] = redis_kind
        self.log = (cwd / "dev-stderr.log").open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen([*sluice_command(), "dev", "--port", str(port)], cwd=cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for_key(self) -> str:
        deadline = self.started + STARTUP_LIMIT_SECS
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, f"sluice dev exited early:\n{self.stderr()}"
                continue
            found = KEY_RE.search(line)
            if found:
                return found.group(0)
        pytest.fail(f"no API key printed within {STARTUP_LIMIT_SECS} s:\n{self.stderr()}")

    def stderr(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def interrupt(self, timeout_secs: float = 45) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout_secs)
        finally:
            if self.process.poll() is None:
                self.kill()
            self.log.close()

    def kill(self) -> None:
        for pid in descendants(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait()


def wait_for_status(base: str, key: str, run_id: str, wanted: str, timeout_secs: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_secs
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, run = call("GET", f"{base}/v1/runs/{run_id}", key)
        assert status == 200, run
        if run["status"] == wanted:
            return run
        time.sleep(0.2)
    pytest.fail(f"run {run_id} still {run.get('status')} after {timeout_secs} s")


@pytest.mark.parametrize("redis_kind", [None, "fakeredis"], ids=["auto-redis", "fakeredis"])
def test_dev_runs_a_job_end_to_end_and_stops_cleanly(tmp_path: Path, sink: Sink, redis_kind: str | None) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dev = DevProcess(tmp_path, port, redis_kind)
    try:
        key = dev.wait_for_key()
        assert time.monotonic() - dev.started < STARTUP_LIMIT_SECS
        banner = "".join(dev.output)
        expected_kind = redis_kind or ("redis-server" if shutil.which("redis-server") else "fakeredis")
        assert f"({expected_kind}" in banner and f"{base}/v1/jobs" in banner
        assert (tmp_path / ".sluice" / "dev.db").exists()
        assert (tmp_path / ".sluice" / "dev-key").read_text().strip() == key

        status, job = call("POST", f"{base}/v1/jobs", key, {"name": "Hello", "slug": "hello",
                                                             "endpoint_url": sink.url})
        assert status == 201, job
        assert job["project_id"] == "dev"
        status, run = call("POST", f"{base}/v1/jobs/hello/trigger", key, {"payload": {"n": 1}})
        assert status == 201, run
        finished = wait_for_status(base, key, run["id"], "completed")
        assert finished["attempt"] == 1 and run["id"] in sink.calls

        # One metrics directory for every dev process: the API's /metrics shows the worker's counters.
        status, text = call("GET", f"{base}/metrics")
        assert status == 200
        assert re.search(r'sluice_runs_finished_total\{status="completed"\} [1-9]', text), text[-2000:]

        processes = descendants(dev.process.pid)
        assert len(processes) >= 3, "api, scheduler and worker run as child processes"
    except BaseException:
        print(dev.stderr())
        dev.kill()
        raise
    code = dev.interrupt()
    assert code == 0, dev.stderr()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(is_running(pid) for pid in processes):
        time.sleep(0.1)
    assert not [pid for pid in processes if is_running(pid)], f"left running:\n{dev.stderr()}"
    assert not is_listening(port)


def test_dev_restart_keeps_data_and_key(tmp_path: Path, sink: Sink) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = DevProcess(tmp_path, port, "fakeredis")
    try:
        key = first.wait_for_key()
        status, _ = call("POST", f"{base}/v1/jobs", key, {"name": "Kept", "slug": "kept", "endpoint_url": sink.url})
        assert status == 201
    except BaseException:
        first.kill()
        raise
    assert first.interrupt() == 0

    second = DevProcess(tmp_path, port, "fakeredis")
    try:
        assert second.wait_for_key() == key
        status, job = call("GET", f"{base}/v1/jobs/kept", key)
        assert status == 200 and job["slug"] == "kept"
    finally:
        if second.process.poll() is None:
            assert second.interrupt() == 0


def test_dev_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*sluice_command(), "dev", "--port", str(port)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "in use" in result.stderr
