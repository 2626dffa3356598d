"""``sluice dev``: the API, scheduler and workers in one command, on an embedded PostgreSQL and Redis.

Nothing but the Python package is needed. State lives in ``.sluice/`` under the current directory
(``--data-dir``): the PostgreSQL data directory (``postgres/``, created and migrated with the production
migrations, kept between runs; ``shared.cli.embedded_postgres``) and the development API key (``dev-key``,
project ``dev``, reused while it is valid). Redis is embedded (``shared.cli.embedded_redis``;
``SLUICE_DEV_REDIS`` = ``auto`` | ``redis-server`` | ``fakeredis``) and empty on every start: runs still
queued in PostgreSQL are re-enqueued by the scheduler's sweeper. An echo endpoint (``shared.cli.echo``)
gives the first job something local to call.

The three roles run as child processes (``shared.cli.children``) with ``DATABASE_URL`` / ``REDIS_URL`` in
their environment, so every code path (migrations, Lua scripts, gunicorn, dramatiq) is the production one.
``DATABASE_URL``, ``REDIS_URL`` and libpq's ``PG*`` variables from the calling shell are ignored on
purpose: dev never touches a configured database.

Ctrl-C or SIGTERM stops the API, the scheduler, the workers (each: SIGTERM, a grace period, then SIGKILL
to its process group), then Redis and PostgreSQL. A second Ctrl-C skips the grace periods. If a child dies
on its own, dev stops everything and exits non-zero. One dev at a time per data directory (a lock).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from shared.cli.api_client import DEFAULT_URL
from shared.cli.children import Child
from shared.cli.echo import EchoEndpoint
from shared.cli.embedded_postgres import start_embedded_postgres
from shared.cli.embedded_redis import EmbeddedRedis, start_embedded_redis
from shared.cli.ports import is_port_free
from shared.cli.roles import run_scheduler, run_worker, serve_api
from shared.stop_signals import StopSignals

DEV_PROJECT = "dev"
GRACE_SECS = 10.0
API_READY_TIMEOUT_SECS = 45.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="API port (default 8080; the echo endpoint "
                                                               "takes the next one when it is free)")
    parser.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    parser.add_argument("--data-dir", default=".sluice", help="where the database and dev-key live "
                                                              "(default .sluice; delete it to start afresh)")
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
    write_private(key_path, plaintext + "\n")
    return plaintext


def ensure_secret_key_file(key_path: Path) -> Path:
    """The development key that seals webhook secrets, generated on first use and kept with the data."""
    from shared.webhooks.sealing import generate_key

    if not key_path.exists():
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(generate_key() + "\n")
    return key_path


def secret_key_env(base: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """``SLUICE_SECRET_KEY_FILE`` for the children, unless the user gave a key of their own."""
    if base.get("SLUICE_SECRET_KEY") or base.get("SLUICE_SECRET_KEY_FILE"):
        return {}
    return {"SLUICE_SECRET_KEY_FILE": str(ensure_secret_key_file(data_dir / "secret-key"))}


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in a file that is owner-only from its creation (never readable by
    others, even for an instant, whatever the umask), written beside it and renamed into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by a process with our pid that died mid-write
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def child_env(base: Mapping[str, str], *, database_url: str, redis_url: str, metrics_dir: Path) -> dict[str, str]:
    env = dict(base)
    env.pop("SLUICE_API_METRICS_PORT", None)  # the banner promises /metrics on the API's own port
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


def _api_is_up(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def banner(base_url: str, key: str, database_url: str, redis: EmbeddedRedis, echo_url: str, data_dir: Path) -> str:
    auth = '-H "Authorization: Bearer $SLUICE_API_KEY"'
    cli_env = "" if base_url == DEFAULT_URL else f"""
  export SLUICE_URL={base_url}"""
    return f"""
Sluice dev is running
  API       {base_url}   (docs {base_url}/docs, metrics {base_url}/metrics)
  console   {base_url}/ui   (sign in with the API key below)
  database  {database_url}   (PostgreSQL, kept in {data_dir / 'postgres'})
  redis     {redis.url}   ({redis.kind}, empty on every start)
  echo      {echo_url}   (an endpoint that answers with what it received; ?status=503 to fail)
  API key   {key}   (project "{DEV_PROJECT}", saved in {data_dir / 'dev-key'})

Try it, in another terminal (private addresses are allowed in dev, so any local endpoint works too):
  export SLUICE_API_KEY={key}{cli_env}
  curl -s -X POST {base_url}/v1/jobs {auth} -H 'Content-Type: application/json' \\
       -d '{{"name": "hello", "slug": "hello", "endpoint_url": "{echo_url}"}}'
  sluice jobs trigger hello --payload '{{"greeting": "hi"}}' --watch
  sluice runs list
  sluice runs get <run id>

Ctrl-C stops everything; delete {data_dir} to start afresh.
"""


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    signals = StopSignals((signal.SIGINT, signal.SIGTERM))  # a second one hurries the children's stop
    started = time.monotonic()
    if not is_port_free(args.host, args.port):
        print(f"sluice dev: {args.host}:{args.port} is in use; choose another with --port", file=sys.stderr)
        return 2
    for name in ("DATABASE_URL", "REDIS_URL"):
        if os.environ.get(name):
            print(f"sluice dev: ignoring {name} (dev uses its own PostgreSQL and Redis)", file=sys.stderr)
    for name in [name for name in os.environ if name.startswith("PG")]:
        del os.environ[name]  # libpq's settings (PGSSLMODE, PGOPTIONS, ...) are meant for another server
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not _lock(data_dir):
        print(f"sluice dev: another sluice dev is running on {data_dir}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: PostgreSQL stops just before the echo endpoint
        # The echo endpoint binds the API's port + 1 first: PostgreSQL and Redis take ports the OS picks, and
        # one of those could otherwise be that port, moving the echo endpoint (and the example job's URL).
        echo = EchoEndpoint(args.port + 1 if args.port < 65535 and is_port_free("127.0.0.1", args.port + 1) else 0)
        cleanup.callback(echo.stop)
        try:
            postgres = start_embedded_postgres(data_dir, log_path=data_dir / "postgres.log")
            cleanup.callback(postgres.stop)
            redis = start_embedded_redis(os.environ.get("SLUICE_DEV_REDIS", "auto"), log_path=data_dir / "redis.log")
            cleanup.callback(redis.stop)
        except (RuntimeError, ValueError) as exc:
            print(f"sluice dev: {exc}", file=sys.stderr)
            return 1
        os.environ.update(secret_key_env(os.environ, data_dir))  # the migrations and every child seal with it
        key = _prepare_database(postgres.url, data_dir)
        children: list[Child] = []
        cleanup.callback(_stop_children, children, signals)
        env = child_env(os.environ, database_url=postgres.url, redis_url=redis.url, metrics_dir=data_dir / "metrics")
        _start_roles(args, env, children)
        base_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}"
        code = _wait_for_api(base_url, children, signals)
        if code is None:
            print(banner(base_url, key, postgres.url, redis, echo.url, data_dir), flush=True)
            print(f"(started in {time.monotonic() - started:.1f} s)", flush=True)
            code = _supervise(children, signals)
    print("sluice dev stopped", file=sys.stderr)
    return code


def _prepare_database(database_url: str, data_dir: Path) -> str:
    """Bring the schema to the newest migration, empty the metrics directory, return the development key."""
    from shared.config import Settings
    from shared.db.migrate import upgrade

    upgrade(database_url, secret_keys=Settings.from_env({**os.environ, "DATABASE_URL": database_url}).secret_keys)
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # samples of a previous session would be merged in
    metrics_dir.mkdir()
    return ensure_dev_key(database_url, data_dir / "dev-key")


def _start_roles(args: argparse.Namespace, env: dict[str, str], children: list[Child]) -> None:
    """Start the API, scheduler and workers into ``children`` (already registered for stopping)."""
    api_env = {**env, "SLUICE_API_BIND": f"{args.host}:{args.port}", "SLUICE_API_WORKERS": "1",
               "SLUICE_API_THREADS": "8"}
    children.append(Child("api", serve_api, ["--graceful-timeout", "5"], api_env))
    children.append(Child("scheduler", run_scheduler, [], env))
    children.append(Child("worker", run_worker, ["--processes", "1", "--threads", str(args.threads)], env))


def _lock(data_dir: Path) -> bool:
    """Hold an exclusive lock on the data directory for the life of this process (children do not inherit
    it: a dev killed with its children still running frees it)."""
    fd = os.open(data_dir / "dev.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True  # the descriptor stays open until the process exits


def _stop_children(children: list[Child], signals: StopSignals) -> None:
    for child in children:  # API first (no new work), then scheduler, then workers finish their calls
        child.stop(GRACE_SECS, hurry=lambda: len(signals.received) > 1)


def _wait_for_api(base_url: str, children: list[Child], signals: StopSignals) -> int | None:
    """``None`` once the API answers ``/healthz``; an exit code if dev must stop instead."""
    deadline = time.monotonic() + API_READY_TIMEOUT_SECS
    while not signals.received:
        dead = [c for c in children if c.exited() is not None]
        if dead:
            print(f"sluice dev: {dead[0].name} exited with {dead[0].exited()} during startup", file=sys.stderr)
            return 1
        if _api_is_up(base_url):
            return None
        if time.monotonic() > deadline:
            print(f"sluice dev: the API did not answer at {base_url} within {API_READY_TIMEOUT_SECS:.0f} s",
                  file=sys.stderr)
            return 1
        signals.wait(0.1)
    return 0


def _supervise(children: list[Child], signals: StopSignals) -> int:
    while not signals.wait(0.5):
        for child in children:
            if child.exited() is not None:
                print(f"sluice dev: {child.name} exited with {child.exited()}; stopping", file=sys.stderr)
                return 1
    return 0
