"""The README's Procfile line, run exactly as written (taken from README.md), against the test PostgreSQL
database and Redis DB: it migrates, then ``web``, two ``worker`` instances and ``scheduler`` complete 500
runs against a local endpoint, keep running (the Procfile's ``release`` entry is not started, so its exit
stops nothing) and stop cleanly on Ctrl-C (SIGINT to the process group).
"""

from __future__ import annotations

import contextlib
import os
import re
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


def readme_procfile_block() -> list[str]:
    """The lines of the README's code block that runs the Procfile."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if "honcho start" in b]
    return [line for line in block.splitlines() if line.strip()]


def readme_command() -> str:
    (line,) = [line for line in readme_procfile_block() if "honcho start" in line]
    return line


def test_the_readme_installs_honcho_and_sets_only_connection_settings() -> None:
    install, export, command = readme_procfile_block()
    assert install == 'pip install ".[procfile]"'
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^procfile = \["honcho[^"]*"\]', pyproject, flags=re.M), "the procfile extra installs honcho"
    names = [assignment.split("=", 1)[0] for assignment in export.split()[1:]]
    assert export.startswith("export ") and names == ["DATABASE_URL", "REDIS_URL", "PORT"]
    assert command == readme_command()


def start_readme_command(env_overrides: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "PORT", "PROMETHEUS_MULTIPROC_DIR", "SLUICE_METRICS_PORT"}}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as after the README's `pip install`
    env.update(env_overrides)  # the values of the README's `export` line, for this test's services
    return subprocess.Popen(["bash", "-c", readme_command()], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


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
    key = make_key(session_factory, "proj-ops")
    log_path = tmp_path / "honcho.log"
    base_port = free_port()
    metrics_ports_free = not is_listening(WORKER_METRICS_PORT) and not is_listening(SCHEDULER_METRICS_PORT)
    manager = start_readme_command({"DATABASE_URL": pg_url(), "REDIS_URL": redis_url(), "PORT": str(base_port),
                                    "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true", "SLUICE_LOG_LEVEL": "WARNING"},
                                   log_path)
    base = f"http://127.0.0.1:{base_port}"
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(manager.pid, signal.SIGKILL)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise

    assert manager.poll() is None, log_path.read_text()[-3000:]  # still running: nothing stopped it
    assert not re.search(r"\brelease\.1\b", log_path.read_text())  # honcho prefixes lines with the process
    os.killpg(manager.pid, signal.SIGINT)  # Ctrl-C in the terminal
    manager.wait(60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(is_running(pid) for pid in processes):
        time.sleep(0.1)
    assert not [pid for pid in processes if is_running(pid)], log_path.read_text()[-3000:]
