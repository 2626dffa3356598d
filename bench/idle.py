"""Idle cost and wake-up benchmark: this tree's fleet against another tree's (``--before``), in one run.

Every Sluice process here talks to a private ``redis-server`` this script starts on a free port, so that
``INFO commandstats`` counts only the commands of the processes measured (other benchmarks and test runs on
a shared Redis server would otherwise be counted too).

* **idle fleet**: ``sluice worker`` (its defaults: 2 processes) and ``sluice scheduler`` of each tree, each
  with its own private Redis, doing nothing for ``--idle-secs`` (20): Redis commands per second (the
  group's, and per worker process) and CPU % of each process.
* **idle dispatch**: one trigger per second into an idle fleet, ``--idle-samples`` (30) times; p50/p99
  from the trigger call's start to the sink receiving the call, and from the trigger's return ("accepted":
  committed and enqueued) to the sink.
* **drain**: ``--runs`` (10,000) queued runs committed, then their messages enqueued; runs/s from the first
  enqueue to the last ``finished_at``; median of ``--rounds`` (3) rounds, the trees alternating.
* **paced**: ``--paced-rate`` (100) triggers/s for ``--paced-secs`` (10); p50/p99 trigger → sink.

Triggers and enqueues are this tree's code (``bench/dispatch_systems.py``) for both fleets; a worker of
the older tree reads the messages and ignores the wake tokens. Targets (issue #17): ≤ 5 commands/s per idle
worker process, ≤ 1 % CPU per process, idle p50 ≤ 3 ms and p99 ≤ 10 ms, drain and paced p99 ≥ 0.95× before.

    git -C /work/main worktree add /tmp/sluice-before <commit>   # with its own venv
    flock /tmp/sluice-bench.lock .venv/bin/python bench/idle.py --before /tmp/sluice-before
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch import Result, drain, paced, warm_up  # noqa: E402
from bench.dispatch_systems import Sluice  # noqa: E402
from bench.support import BENCH_SECRET_KEY, SinkProcess, fmt_number, percentile, prepare_database  # noqa: E402
from shared.cli.embedded_redis import start_embedded_redis  # noqa: E402


@dataclass
class Side:
    name: str
    root: Path
    idle_commands: dict[str, float] = field(default_factory=dict)  # group → commands/s
    idle_cpu: dict[str, float] = field(default_factory=dict)  # process label → CPU %
    idle_from_start_ms: list[float] = field(default_factory=list)
    idle_from_accept_ms: list[float] = field(default_factory=list)
    result: Result = field(default_factory=Result)

    @property
    def sluice(self) -> str:
        return str(self.root / ".venv" / "bin" / "sluice")


def _env(dsn: str, redis_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true",
            "SLUICE_SECRET_KEY": os.environ.get("SLUICE_SECRET_KEY", BENCH_SECRET_KEY),
            "SLUICE_METRICS_PORT": "0", "SLUICE_LOG_LEVEL": os.environ.get("SLUICE_BENCH_LOG_LEVEL", "WARNING")}


def _group_pids(pgid: int) -> dict[int, str]:
    """pid → a label (``supervisor``, ``worker-N``, ``scheduler``) for the group's Python processes."""
    pids: dict[int, str] = {}
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) != pgid or "resource_tracker" in cmdline:
            continue
        pids[int(entry)] = cmdline
    labels: dict[int, str] = {}
    workers = 0
    for pid, cmdline in pids.items():
        if "spawn_main" in cmdline:
            workers += 1
            labels[pid] = f"worker process {workers}"
        elif " worker" in cmdline:
            labels[pid] = "worker supervisor"
        else:
            labels[pid] = "scheduler"
    return labels


def _cpu_secs(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def measure_idle_fleet(side: Side, dsn: str, args: argparse.Namespace) -> None:
    """Worker fleet and scheduler of ``side``, each on its own private Redis, idle for ``--idle-secs``."""
    servers = {group: start_embedded_redis("redis-server") for group in ("worker", "scheduler")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["worker"] = subprocess.Popen([side.sluice, "worker", "--queues", "sluice.runs,sluice.webhooks"],
                                           env=_env(dsn, servers["worker"].url), start_new_session=True)
        procs["scheduler"] = subprocess.Popen([side.sluice, "scheduler"], env=_env(dsn, servers["scheduler"].url),
                                              start_new_session=True)
        time.sleep(args.settle_secs)
        clients = {group: redis.Redis.from_url(server.url) for group, server in servers.items()}
        labels: dict[int, str] = {}
        for proc in procs.values():
            labels.update(_group_pids(proc.pid))
        commands = {group: _commands(client) for group, client in clients.items()}
        cpu = {pid: _cpu_secs(pid) for pid in labels}
        started = time.monotonic()
        time.sleep(args.idle_secs)
        elapsed = time.monotonic() - started
        for group, client in clients.items():
            side.idle_commands[group] = (_commands(client) - commands[group]) / elapsed
            client.close()
        workers = sum(1 for label in labels.values() if label.startswith("worker process"))
        side.idle_commands["per worker process"] = side.idle_commands["worker"] / max(1, workers)
        for pid, label in labels.items():
            side.idle_cpu[label] = (_cpu_secs(pid) - cpu[pid]) * 100 / elapsed
    finally:
        for proc in procs.values():
            _stop(proc)
        for server in servers.values():
            server.stop()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Fleet(Sluice):
    """``bench/dispatch_systems.Sluice`` with the worker command of one tree, at that tree's defaults."""

    def __init__(self, args: argparse.Namespace, sink: SinkProcess, side: Side) -> None:
        super().__init__(args, sink)
        self.side = side
        self.name = side.name

    def start_workers(self) -> None:
        self.proc = subprocess.Popen([self.side.sluice, "worker", "--processes", str(self.args.processes),
                                      "--threads", str(self.args.threads), "--queues", "sluice.runs"],
                                     env=_env(self.args.dsn, self.args.redis_url), start_new_session=True)


def idle_dispatch(fleet: Fleet, side: Side, samples: int) -> None:
    """One trigger per second into the idle fleet."""
    fleet.new_batch()
    fleet.sink.records()
    time.sleep(2)
    for _ in range(samples):
        time.sleep(1.0)
        began = time.time()
        run_id = fleet.trigger()
        accepted = time.time()
        deadline = time.monotonic() + 10
        while fleet.sink.count() < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side.name}: idle run {run_id} never reached the sink")
            time.sleep(0.002)
        for rid, _attempt, arrived in fleet.sink.records():
            if rid == run_id:
                side.idle_from_start_ms.append((arrived - began) * 1000)
                side.idle_from_accept_ms.append((arrived - accepted) * 1000)
    fleet.wait_terminal(samples)


def run_dispatch(sides: list[Side], args: argparse.Namespace) -> None:
    server = start_embedded_redis("redis-server")
    args.redis_url = server.url
    sink = SinkProcess()
    try:
        fleets = [Fleet(args, sink, side) for side in sides]
        for round_no in range(args.rounds):
            for fleet, side in zip(fleets, sides, strict=True):
                fleet.start_workers()
                try:
                    warm_up(fleet)
                    drain(fleet, args.runs, side.result)
                    print(f"  round {round_no + 1} {side.name}: drain {side.result.drain_rps[-1]:.0f} runs/s",
                          flush=True)
                    if round_no == args.rounds - 1:
                        paced(fleet, args.paced_rate, args.paced_secs, side.result)
                        idle_dispatch(fleet, side, args.idle_samples)
                finally:
                    fleet.stop_workers()
    finally:
        sink.stop()
        server.stop()


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.2f}×" if before and before == before else ""


Row = tuple[str, float, float, str]


def idle_rows(before: Side, after: Side) -> list[Row]:
    rows: list[Row] = [
        ("idle Redis cmd/s: worker fleet", before.idle_commands["worker"], after.idle_commands["worker"], ""),
        ("idle Redis cmd/s: per worker process", before.idle_commands["per worker process"],
         after.idle_commands["per worker process"], "≤ 5"),
        ("idle Redis cmd/s: scheduler", before.idle_commands["scheduler"], after.idle_commands["scheduler"], ""),
    ]
    for label in sorted(set(before.idle_cpu) | set(after.idle_cpu)):
        rows.append((f"idle CPU %: {label}", before.idle_cpu.get(label, float("nan")),
                     after.idle_cpu.get(label, float("nan")), "≤ 1"))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"| {'metric':<40} | {'before':>10} | {'after':>10} | target |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|--------|")
    for label, b_value, a_value, target in rows:
        fmt = (lambda v: "-" if v != v else f"{v:.2f}") if ("ms" in label or "%" in label) else fmt_number
        print(f"| {label:<40} | {fmt(float(b_value)):>10} | {fmt(float(a_value)):>10} | {target} |", flush=True)


def report(before: Side, after: Side, args: argparse.Namespace) -> None:
    b, a = before.result, after.result
    rows: list[Row] = []
    rows += [
        ("idle dispatch p50 ms (accepted →)", percentile(before.idle_from_accept_ms, 50),
         percentile(after.idle_from_accept_ms, 50), "≤ 3"),
        ("idle dispatch p99 ms (accepted →)", percentile(before.idle_from_accept_ms, 99),
         percentile(after.idle_from_accept_ms, 99), "≤ 10"),
        ("idle dispatch p50 ms (trigger start →)", percentile(before.idle_from_start_ms, 50),
         percentile(after.idle_from_start_ms, 50), ""),
        ("idle dispatch p99 ms (trigger start →)", percentile(before.idle_from_start_ms, 99),
         percentile(after.idle_from_start_ms, 99), ""),
    ]
    b_drain, a_drain = statistics.median(b.drain_rps), statistics.median(a.drain_rps)
    rows += [
        ("drain runs/s (median)", b_drain, a_drain, f"≥ 0.95×: {_ratio(a_drain, b_drain)}"),
        ("paced p50 ms", percentile(b.paced_ms, 50), percentile(a.paced_ms, 50), ""),
        ("paced p99 ms", percentile(b.paced_ms, 99), percentile(a.paced_ms, 99),
         f"before/after ≥ 0.95×: {_ratio(percentile(b.paced_ms, 99), percentile(a.paced_ms, 99))}"),
        ("drain worker CPU ms/run", statistics.median(b.worker_cpu_ms), statistics.median(a.worker_cpu_ms), ""),
        ("lost runs", b.lost, a.lost, "0"),
        ("duplicate attempts", b.duplicates, a.duplicates, "0"),
    ]
    print()
    print(f"before={args.before} idle_secs={args.idle_secs} idle_samples={args.idle_samples} runs={args.runs} "
          f"rounds={args.rounds} paced={args.paced_rate}/s×{args.paced_secs}s processes={args.processes} "
          f"threads={args.threads} cpus={os.cpu_count()}")
    print_table(rows)
    print(f"drain rounds before: {[round(x) for x in b.drain_rps]}  after: {[round(x) for x in a.drain_rps]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    os.environ.setdefault("SLUICE_SECRET_KEY", BENCH_SECRET_KEY)  # the fleets and this process's triggers
    parser.add_argument("--before", required=True, type=Path, help="the other tree (with .venv/bin/sluice)")
    parser.add_argument("--idle-secs", type=float, default=20.0)
    parser.add_argument("--settle-secs", type=float, default=5.0)
    parser.add_argument("--idle-samples", type=int, default=30)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paced-rate", type=int, default=100)
    parser.add_argument("--paced-secs", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--skip-dispatch", action="store_true", help="the idle fleet only")
    parser.add_argument("--skip-idle", action="store_true", help="the dispatch phases only")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "SLUICE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-name", default="sluice_bench_idle")
    args = parser.parse_args(argv)
    args.dsn = prepare_database(args.pg_admin_url, args.db_name)
    sides = [Side("before", args.before.resolve()), Side("after", ROOT)]
    for side in sides:
        if not Path(side.sluice).exists():
            raise SystemExit(f"{side.sluice} not found: make the tree's venv first")
    if not args.skip_idle:
        for side in sides:
            measure_idle_fleet(side, args.dsn, args)
        print(f"\nidle fleet: before={args.before} idle_secs={args.idle_secs} (worker: its defaults; scheduler)")
        print_table(idle_rows(sides[0], sides[1]))
    if not args.skip_dispatch:
        run_dispatch(sides, args)
        report(sides[0], sides[1], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
