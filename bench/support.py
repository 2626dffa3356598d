"""What every benchmark needs the same way: a fresh migrated database and the local HTTP sink process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shared.db.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
# Seals the benchmarks' webhook secrets (benchmark data only); processes started by a benchmark inherit it.
BENCH_SECRET_KEY = "YmVuY2gtb25seS1zZWNyZXQta2V5LTMyLWJ5dGVzISE="


def prepare_database_empty(admin_url: str, name: str) -> str:
    """Drop and recreate database ``name`` (ending its sessions), empty; return its URL."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                             "AND pid <> pg_backend_pid()"), {"d": name})
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def prepare_database(admin_url: str, name: str) -> str:
    """Drop and recreate database ``name`` (ending its sessions), migrate it; return its URL."""
    url = prepare_database_empty(admin_url, name)
    upgrade(url)
    return url


class SinkProcess:
    """``bench/sink.py`` in its own process (so it doesn't share the GIL with the measurer)."""

    def __init__(self, delay_secs: float = 0.0) -> None:
        ready = Path(tempfile.mkdtemp()) / "port"
        self.delay_secs = delay_secs
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sink.py"), "--ready-file", str(ready),
                                      "--delay-secs", str(delay_secs)])
        deadline = time.monotonic() + 15
        while not ready.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("sink did not start")
            time.sleep(0.05)
        self.port = int(ready.read_text())
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
            return json.loads(response.read())

    def records(self) -> list[tuple[str, str, float]]:
        """``(run id, attempt, arrival unix time)`` recorded since the last call."""
        return [tuple(r) for r in self._get("/records")]  # type: ignore[misc]

    def count(self) -> int:
        return int(self._get("/count")["count"])

    def wait_for(self, n: int, deadline: float) -> None:
        """Until the sink has seen ``n`` calls or ``deadline`` (``time.monotonic()``) passes. A drain's end is
        found here before the database is asked: counting a large batch there ten times a second would be
        PostgreSQL CPU charged to the system measured."""
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def cpu_secs_of_group(pgid: int) -> float:
    """utime + stime of every process in the process group, in seconds."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp) is index 2 after the comm field
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def busy_cpu_secs() -> float:
    """CPU seconds the whole machine has spent busy (every process and the kernel, all cores): what a
    drain costs in all, the sink, Redis and the network stack included."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def fmt_number(value: float) -> str:
    """``-`` for NaN, else thousands-separated with one decimal."""
    return "-" if value != value else f"{value:,.1f}"


def cpu_secs_of_database_backends(database: str) -> float:
    """utime + stime of the PostgreSQL backends connected to ``database`` (their process titles name it):
    the server-side CPU one benchmarked system costs, apart from other databases on the same server."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not title.startswith("postgres: ") or f" {database} " not in title:
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
