"""The Procfile under honcho, against the test PostgreSQL database and Redis DB: ``release`` migrates, then
``web``, two ``worker`` instances and ``scheduler`` complete 500 runs against a local endpoint and stop
cleanly on SIGINT. This is how a Procfile platform (or a developer with honcho/foreman) runs Sluice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Run
from tests.conftest import make_key, pg_url, redis_url
from tests.integration.process_support import (
    Sink,
    call,
    descendants,
    free_port,
    is_listening,
    is_running,
    listener_pids,
    sink_fixture,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNS = 500
WORKER_METRICS_PORT, SCHEDULER_METRICS_PORT = 9101, 9102


def honcho(args: list[str], env_file: Path, log_path: Path, base_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "PORT", "PROMETHEUS_MULTIPROC_DIR", "SLUICE_METRICS_PORT"}}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the Procfile says plain `sluice ...`
    return subprocess.Popen([str(BIN / "honcho"), "start", "-f", str(REPO / "Procfile"), "-e", str(env_file),
                             "-d", str(REPO), "-p", str(base_port), "--no-colour", *args],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_path.open("ab"),
                            stderr=subprocess.STDOUT)


def metric_sum(text: str, sample: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(sample + "{") and not line.startswith(sample + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_procfile_processes_complete_500_runs(tmp_path: Path, sink: Sink, settings,  # type: ignore[no-untyped-def]
                                              session_factory: sessionmaker[Session]) -> None:
    if not (BIN / "honcho").exists() or not (REPO / "Procfile").exists():
        pytest.skip("honcho or the Procfile is missing")
    env_file = tmp_path / "procfile.env"
    env_file.write_text(f"DATABASE_URL={pg_url()}\nREDIS_URL={redis_url()}\nSLUICE_ALLOW_PRIVATE_ENDPOINTS=true\n"
                        "SLUICE_LOG_LEVEL=WARNING\n")
    log_path = tmp_path / "honcho.log"
    base_port = free_port()
    metrics_ports_free = not is_listening(WORKER_METRICS_PORT) and not is_listening(SCHEDULER_METRICS_PORT)

    release = honcho(["release"], env_file, log_path, base_port)
    assert release.wait(120) == 0, log_path.read_text()[-3000:]

    key = make_key(session_factory, "proj-ops")
    base = f"http://127.0.0.1:{base_port}"
    manager = honcho(["web", "worker", "scheduler", "-c", "worker=2"], env_file, log_path, base_port)
    try:
        deadline = time.monotonic() + 60
        while call("GET", f"{base}/healthz")[0] != 200:
            assert manager.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)

        status, job = call("POST", f"{base}/v1/jobs", key, {"name": "Bulk", "slug": "bulk", "endpoint_url": sink.url})
        assert status == 201, job
        status, body = call("POST", f"{base}/v1/jobs/bulk/trigger/bulk", key,
                            {"items": [{"payload": {"i": i}} for i in range(RUNS)]})
        assert status == 201 and body["created"] == RUNS, body
        run_ids = {r["id"] for r in body["results"]}

        deadline = time.monotonic() + 180
        completed = 0
        while time.monotonic() < deadline:
            with session_factory() as session:
                completed = session.scalar(sa.select(sa.func.count()).select_from(Run)
                                           .where(Run.job_id == job["id"], Run.status == "completed")) or 0
            if completed == RUNS:
                break
            assert manager.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert completed == RUNS, f"{completed}/{RUNS} completed\n{log_path.read_text()[-3000:]}"
        assert set(sink.calls) == run_ids  # at least once each; duplicates are allowed, strangers are not

        status, text = call("GET", f"{base}/metrics")  # both gunicorn workers' samples, merged
        assert status == 200
        assert metric_sum(text, "sluice_runs_created_total", triggered_by="manual") == RUNS
        assert metric_sum(text, "sluice_http_requests_total", route="/v1/jobs/<job>/trigger/bulk", status="201") == 1
        assert metric_sum(text, "sluice_queue_depth", queue="sluice.runs") == 0
        processes = descendants(manager.pid)
        assert len(processes) >= 4
        ours = {port for port in (WORKER_METRICS_PORT, SCHEDULER_METRICS_PORT) if listener_pids(port) & processes}
        if metrics_ports_free:  # else another program on this host holds one of the default ports
            assert ours == {WORKER_METRICS_PORT, SCHEDULER_METRICS_PORT}, ours
            # One worker instance serves 9101 (the other finds it taken and logs it); the scheduler 9102.
            status, worker_text = call("GET", f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics")
            assert status == 200
            assert 0 < metric_sum(worker_text, "sluice_runs_finished_total", status="completed") <= RUNS
            assert metric_sum(worker_text, "sluice_attempt_duration_seconds_count", outcome="success") > 0
            status, scheduler_text = call("GET", f"http://127.0.0.1:{SCHEDULER_METRICS_PORT}/metrics")
            assert status == 200 and "sluice_schedule_lag_seconds" in scheduler_text
    except BaseException:
        leftovers = descendants(manager.pid)  # before the kill: honcho's children then belong to init
        manager.kill()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise

    manager.send_signal(signal.SIGINT)
    manager.wait(60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(is_running(pid) for pid in processes):
        time.sleep(0.1)
    assert not [pid for pid in processes if is_running(pid)], log_path.read_text()[-3000:]
