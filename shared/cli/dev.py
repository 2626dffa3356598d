"""``sluice dev``: the API, scheduler and workers in one command, with no PostgreSQL or Redis installed.

State lives in ``.sluice/`` under the current directory: a SQLite database (``dev.db``, created and
migrated with the production migrations) and the development API key (``dev-key``, project ``dev``,
reused while it is valid). Redis is embedded (``shared.cli.embedded_redis``; ``SLUICE_DEV_REDIS`` =
``auto`` | ``redis-server`` | ``fakeredis``) and empty on every start: runs still queued in SQLite are
re-enqueued by the scheduler's sweeper.

The three roles run as child processes of the same console script (``python -m shared.cli.main api|worker|
scheduler``) with ``DATABASE_URL`` / ``REDIS_URL`` in their environment, so every code path (migrations,
Lua scripts, gunicorn, dramatiq) is the production one. ``DATABASE_URL`` and ``REDIS_URL`` set in the
calling shell are ignored on purpose: dev never touches a configured database.

Each child runs in its own process group. Ctrl-C or SIGTERM stops them in order (API, scheduler, workers,
then Redis): SIGTERM, a grace period, then SIGKILL to the whole group, so no grandchild (a gunicorn or
dramatiq worker process) survives. A second Ctrl-C skips the grace periods. If a child dies on its own,
dev stops everything and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from shared.cli.embedded_redis import EmbeddedRedis, start_embedded_redis

DEV_PROJECT = "dev"
GRACE_SECS = 10.0
API_READY_TIMEOUT_SECS = 45.0


class Child:
    """One role process (``python -m shared.cli.main <role> ...``) in its own process group."""

    def __init__(self, role: str, args: list[str], env: Mapping[str, str]) -> None:
        self.role = role
        self.process = subprocess.Popen([sys.executable, "-m", "shared.cli.main", role, *args], env=dict(env),
                                        stdin=subprocess.DEVNULL, process_group=0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_secs: float, hurry: threading.Event) -> None:
        """SIGTERM the role's main process, wait up to ``grace_secs`` (less once ``hurry`` is set), then
        SIGKILL whatever is left of its process group."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM, group=False)
            deadline = time.monotonic() + grace_secs
            while self.process.poll() is None and time.monotonic() < deadline and not hurry.is_set():
                time.sleep(0.05)
        self._signal(signal.SIGKILL, group=True)  # stragglers: the main process, or its own children
        self.process.wait()

    def _signal(self, signum: int, *, group: bool) -> None:
        try:
            if group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass  # already gone


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    parser.add_argument("--data-dir", default=".sluice", help="where dev.db and dev-key live (default .sluice)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    return parser


def ensure_dev_key(database_url: str, key_path: Path) -> str:
    """The stored development key if it still authenticates in this database, else a new one (saved)."""
    from shared.apikeys import authenticate, create_key
    from shared.clock import utcnow
    from shared.db.engine import make_engine, make_session_factory, transaction

    engine = make_engine(database_url, single_use=True)
    try:
        with transaction(make_session_factory(engine)) as session:
            stored = key_path.read_text().strip() if key_path.exists() else ""
            if stored and authenticate(session, stored, utcnow()) is not None:
                return stored
            _, plaintext = create_key(session, project_id=DEV_PROJECT, scopes=["*"], name="sluice dev",
                                      now=utcnow())
    finally:
        engine.dispose()
    key_path.write_text(plaintext + "\n")
    key_path.chmod(0o600)
    return plaintext


def child_env(base: Mapping[str, str], *, database_url: str, redis_url: str, metrics_dir: Path) -> dict[str, str]:
    env = dict(base)
    env.update({
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
        # One metrics directory for every process: the API's /metrics shows them all, so the worker and
        # scheduler listeners are off (they would also collide between two dev instances).
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "SLUICE_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("SLUICE_LOG_JSON", "false")
    return env


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _api_is_up(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def banner(base_url: str, key: str, database_url: str, redis: EmbeddedRedis, key_path: Path) -> str:
    auth = '-H "Authorization: Bearer $SLUICE_KEY"'
    return f"""
Sluice dev is running
  API       {base_url}   (docs {base_url}/docs, metrics {base_url}/metrics)
  database  {database_url}
  redis     {redis.url} ({redis.kind}, empty on every start)
  API key   {key}   (project "{DEV_PROJECT}", saved in {key_path})

Try it (private addresses are allowed in dev, so any local endpoint works too):
  export SLUICE_KEY={key}
  curl -s -X POST {base_url}/v1/jobs {auth} -H 'Content-Type: application/json' \\
       -d '{{"name": "hello", "slug": "hello", "endpoint_url": "https://httpbin.org/post"}}'
  curl -s -X POST {base_url}/v1/jobs/hello/trigger {auth} -H 'Content-Type: application/json' \\
       -d '{{"payload": {{"greeting": "hi"}}}}'
  curl -s {base_url}/v1/runs/<id from the trigger response> {auth}

Ctrl-C stops everything.
"""


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        (hurry if stop.is_set() else stop).set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    if not _port_is_free(args.host, args.port):
        print(f"sluice dev: {args.host}:{args.port} is in use; choose another with --port", file=sys.stderr)
        return 2
    for name in ("DATABASE_URL", "REDIS_URL"):
        if os.environ.get(name):
            print(f"sluice dev: ignoring {name} (dev uses its own SQLite file and embedded Redis)", file=sys.stderr)

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{data_dir / 'dev.db'}"
    from shared.db.migrate import upgrade

    upgrade(database_url)
    key_path = data_dir / "dev-key"
    key = ensure_dev_key(database_url, key_path)
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # samples of a previous session would be merged in
    metrics_dir.mkdir()

    try:
        redis = start_embedded_redis(os.environ.get("SLUICE_DEV_REDIS", "auto"), log_path=data_dir / "redis.log")
    except (RuntimeError, ValueError) as exc:
        print(f"sluice dev: {exc}", file=sys.stderr)
        return 1
    children: list[Child] = []
    try:
        env = child_env(os.environ, database_url=database_url, redis_url=redis.url, metrics_dir=metrics_dir)
        api_env = {**env, "SLUICE_API_BIND": f"{args.host}:{args.port}", "SLUICE_API_WORKERS": "1",
                   "SLUICE_API_THREADS": "8"}
        children.append(Child("api", ["--graceful-timeout", "5"], api_env))
        children.append(Child("scheduler", [], env))
        children.append(Child("worker", ["--processes", "1", "--threads", str(args.threads)], env))
        base_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}"
        code = _wait_for_api(base_url, children, stop)
        if code is None:
            print(banner(base_url, key, database_url, redis, key_path), flush=True)
            print(f"(started in {time.monotonic() - started:.1f} s)", flush=True)
            code = _supervise(children, stop)
    finally:
        for child in children:  # API first (no new work), then scheduler, then workers finish their calls
            child.stop(GRACE_SECS, hurry)
        redis.stop()
    print("sluice dev stopped", file=sys.stderr)
    return code


def _wait_for_api(base_url: str, children: list[Child], stop: threading.Event) -> int | None:
    """``None`` once the API answers ``/healthz``; an exit code if dev must stop instead."""
    deadline = time.monotonic() + API_READY_TIMEOUT_SECS
    while not stop.is_set():
        dead = [c for c in children if c.exited() is not None]
        if dead:
            print(f"sluice dev: {dead[0].role} exited with {dead[0].exited()} during startup", file=sys.stderr)
            return 1
        if _api_is_up(base_url):
            return None
        if time.monotonic() > deadline:
            print(f"sluice dev: the API did not answer at {base_url} within {API_READY_TIMEOUT_SECS:.0f} s",
                  file=sys.stderr)
            return 1
        stop.wait(0.1)
    return 0


def _supervise(children: list[Child], stop: threading.Event) -> int:
    while not stop.wait(0.5):
        for child in children:
            if child.exited() is not None:
                print(f"sluice dev: {child.role} exited with {child.exited()}; stopping", file=sys.stderr)
                return 1
    return 0
