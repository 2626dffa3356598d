"""An embedded Redis for ``sluice dev``: a throwaway server on a free loopback port, gone when dev stops.

Two kinds, chosen by ``start_embedded_redis(kind)``:

- ``redis-server``: a real ``redis-server`` binary from PATH, run as a child process with persistence off
  (``--save "" --appendonly no``). Preferred whenever it is installed.
- ``fakeredis``: fakeredis's ``TcpFakeServer`` (with Lua through ``lupa``) on a thread of the calling
  process. It speaks RESP over TCP and runs dramatiq's and ``shared.limits.limiter``'s Lua scripts, so the other
  processes connect to it exactly as to a real server. Slower, single process; for development only.

``auto`` picks ``redis-server`` if it is on PATH, else ``fakeredis``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from shared.cli.children import die_with_parent
from shared.cli.ports import free_port

KINDS = ("auto", "redis-server", "fakeredis")
STARTUP_TIMEOUT_SECS = 10.0


def _wait_until_ready(url: str, deadline: float, alive: Callable[[], bool]) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        while time.monotonic() < deadline and alive():
            try:
                if client.ping():
                    return True
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                pass
            time.sleep(0.05)
        return False
    finally:
        client.close()


class RedisServerProcess:
    """A ``redis-server`` child on 127.0.0.1:<free port>, in its own process group so that a terminal's
    Ctrl-C reaches only ``sluice dev``, which stops Redis after the processes that use it (and sent SIGTERM
    if dev dies)."""

    kind = "redis-server"

    def __init__(self, binary: str, port: int, log_path: Path | None = None) -> None:
        self.url = f"redis://127.0.0.1:{port}/0"
        logging_args = ["--logfile", str(log_path)] if log_path is not None else []
        self._process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning", *logging_args],
            stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, process_group=0,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout_secs: float = 5.0) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout_secs)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class FakeRedisServer:
    """fakeredis's TCP server on 127.0.0.1:<free port>, served by a thread of this process."""

    kind = "fakeredis"

    def __init__(self) -> None:
        import fakeredis

        server_class = getattr(fakeredis, "TcpFakeServer", None)
        if server_class is None:  # tested with 2.41; 2.31.1 fixed its thread shutdown and Lua lock scripts
            raise RuntimeError(f"fakeredis {fakeredis.__version__} has no TcpFakeServer; "
                               "install fakeredis[lua]>=2.31.1")
        self._server = server_class(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.server_address[1]}/0"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakeredis", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return None  # runs inside this process

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_secs: float = 5.0) -> None:
        if self._thread.is_alive():
            self._server.shutdown()  # stops the accept loop and tells every connection handler to finish
            self._thread.join(timeout_secs)
        self._server.server_close()


EmbeddedRedis = RedisServerProcess | FakeRedisServer


def resolve_kind(kind: str) -> str:
    """``auto`` → ``redis-server`` when one is on PATH, else ``fakeredis``; other kinds are checked."""
    if kind not in KINDS:
        raise ValueError(f"unknown embedded Redis kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "auto":
        return "redis-server" if shutil.which("redis-server") else "fakeredis"
    if kind == "redis-server" and not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not on PATH; install it or use SLUICE_DEV_REDIS=fakeredis")
    return kind


def start_embedded_redis(kind: str = "auto", *, log_path: Path | None = None,
                         timeout_secs: float = STARTUP_TIMEOUT_SECS, attempts: int = 3) -> EmbeddedRedis:
    """Start an embedded Redis and return it once it answers PING.

    A ``redis-server`` that cannot bind its port (taken between ``free_port`` and its start) is retried
    on another port, up to ``attempts`` times; its log goes to ``log_path`` (default: stderr). Raises
    ``RuntimeError`` if none comes up in time.
    """
    kind = resolve_kind(kind)
    deadline = time.monotonic() + timeout_secs
    if kind == "fakeredis":
        server: EmbeddedRedis = FakeRedisServer()
        if _wait_until_ready(server.url, deadline, server.is_alive):
            return server
        server.stop()
        raise RuntimeError("fakeredis did not start")
    binary = shutil.which("redis-server") or "redis-server"
    for _ in range(attempts):
        server = RedisServerProcess(binary, free_port(), log_path)
        if _wait_until_ready(server.url, deadline, server.is_alive):
            return server
        server.stop()
    where = f"; see {log_path}" if log_path is not None else ""
    raise RuntimeError(f"redis-server did not start within {timeout_secs:.0f} s{where}")
