"""CPU per API request of two trees, measured chunk by chunk: this tree against another checkout.

The in-process benchmarks (``jobs_api.py --in-process``, ``trigger.py --in-process``) each measure one
tree; run one after the other, their figures move with the machine (on a shared 2-core machine, up to 2×
between runs of the same tree). Here both trees serve the same requests side by side: each runs in its own
process (its own interpreter and venv, its own database), both pinned to the same CPU when ``taskset`` is
installed, and they take turns, ``--per-chunk`` requests at a time, the order swapping every pair. The
figure that matters is the median of the per-pair ratios, which a slow spell shared by both cancels out.
Even so, one run is good to about ±5 %. ``--opcodes N`` instead counts the Python opcodes each tree runs
per request (``sys.settrace``): exact and repeatable, blind to C code and system calls.

    .venv/bin/python bench/trees.py /tmp/before --ops get,list,create,trigger --chunks 21

The other tree needs its own ``.venv`` and the same in-process benchmark helpers (``bench/jobs_api.py``'s
``seed`` and ``ENDPOINT``, ``bench/trigger.py``'s ``seed``, ``SLUG`` and ``single_body``). Each request
goes through the Flask test client (its own cost, ~0.15 ms, is in both figures); each tree's database is
``sluice_bench_trees_<a|b>``, rebuilt at start.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPS = ("get", "list", "create", "trigger")


def serve(tree: str, db_name: str, redis_url: str) -> None:
    """The side of one tree: seed, then answer ``<op> <count>`` lines with the CPU ms per request."""
    sys.path.insert(0, tree)
    os.chdir(tree)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sluice-bench-metrics-"))
    from bench import jobs_api, support, trigger

    secret = getattr(support, "BENCH_SECRET_KEY", None)  # trees from before it existed need none
    url = support.prepare_database(os.environ.get("SLUICE_BENCH_PG_ADMIN_URL",
                                                  "postgresql://postgres@127.0.0.1:5432/postgres"), db_name)
    key, ids = jobs_api.seed(url, 10_000)
    trigger_key = trigger.seed(url)
    from api.app import create_app
    from shared.config import Settings

    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "SLUICE_LOG_LEVEL": "WARNING",
           "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true", **({"SLUICE_SECRET_KEY": secret} if secret else {})}
    client = create_app(Settings.from_env(env)).test_client()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    trigger_headers = {"Authorization": f"Bearer {trigger_key}", "Content-Type": "application/json"}
    rng = random.Random(7)
    calls: dict[str, Callable[[int], Any]] = {
        "get": lambda seq: client.get(f"/v1/jobs/{ids[rng.randrange(len(ids))]}", headers=headers),
        "list": lambda seq: client.get("/v1/jobs?limit=50", headers=headers),
        "create": lambda seq: client.post("/v1/jobs", headers=headers, data=json.dumps(
            {"name": f"CPU {seq}", "slug": f"cpu-{seq}", "endpoint_url": jobs_api.ENDPOINT, "cron": "0 * * * *",
             "tags": {"team": "bench"}})),
        "trigger": lambda seq: client.post(f"/v1/jobs/{trigger.SLUG}/trigger", data=trigger.single_body(seq),
                                           headers=trigger_headers),
    }
    print("ready", flush=True)
    seq = 0

    def run(op: str, count: int) -> None:
        nonlocal seq
        for _ in range(count):
            seq += 1
            response = calls[op](seq)
            if response.status_code >= 300:
                raise SystemExit(f"{tree} {op}: HTTP {response.status_code} {response.data[:200]!r}")

    for line in sys.stdin:
        measure, op, count = line.split()
        work = functools.partial(run, op, int(count))
        if measure == "opcodes":
            print(opcodes_of(work) / int(count), flush=True)
            continue
        began = time.process_time()
        work()
        print((time.process_time() - began) / int(count) * 1000, flush=True)


def opcodes_of(work: Callable[[], None]) -> int:
    """The Python opcodes ``work`` executes (``sys.settrace``): a count the machine's load cannot move."""
    executed = 0

    def local(_frame: Any, event: str, _arg: Any) -> Any:
        nonlocal executed
        executed += event == "opcode"
        return local

    def new_frame(frame: Any, _event: str, _arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return local

    sys.settrace(new_frame)
    try:
        work()
    finally:
        sys.settrace(None)
    return executed


class Side:
    """One tree's serving process."""

    def __init__(self, tree: Path, db_name: str, redis_url: str) -> None:
        pin = ["taskset", "-c", str((os.cpu_count() or 1) - 1)] if shutil.which("taskset") else []
        self.tree = tree
        self.process = subprocess.Popen(
            [*pin, str(tree / ".venv/bin/python"), __file__, "--serve", str(tree), db_name, "--redis-url", redis_url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._line() != "ready":
            raise SystemExit(f"{tree}: did not start")

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def chunk(self, op: str, count: int, measure: str = "cpu") -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{measure} {op} {count}\n")
        self.process.stdin.flush()
        answer = self._line()
        if not answer:
            raise SystemExit(f"{self.tree}: stopped during {op}")
        return float(answer)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, nargs="?", help="the tree to compare this one with")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--chunks", type=int, default=21, help="measured pairs of chunks per operation (21)")
    parser.add_argument("--per-chunk", type=int, default=150, help="requests per chunk (150)")
    parser.add_argument("--opcodes", type=int, default=0, metavar="N",
                        help="instead of CPU time, count the Python opcodes of N requests per operation")
    parser.add_argument("--redis-url", default=os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    parser.add_argument("--serve", nargs=2, metavar=("TREE", "DB_NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        tree, db_name = args.serve
        serve(tree, db_name, args.redis_url)
        return 0
    if args.other is None:
        parser.error("the other tree is required")
    sides = {"this": Side(ROOT, "sluice_bench_trees_a", args.redis_url),
             "other": Side(args.other.resolve(), "sluice_bench_trees_b", args.redis_url)}
    if args.opcodes:
        print_opcodes(sides, args.ops.split(","), args.opcodes, args.per_chunk)
        for side in sides.values():
            side.close()
        return 0
    print(f"this tree: {ROOT}\nother tree: {args.other.resolve()}\n"
          f"{args.chunks} pairs of chunks of {args.per_chunk} requests; CPU ms per request (medians)\n")
    print("| operation | this | other | other ÷ this, median of pairs |\n|---|---:|---:|---:|")
    for op in args.ops.split(","):
        for side in sides.values():
            side.chunk(op, args.per_chunk)  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in sides}
        ratios = []
        for pair in range(args.chunks):
            order = ("this", "other") if pair % 2 == 0 else ("other", "this")
            got = {name: sides[name].chunk(op, args.per_chunk) for name in order}
            for name, value in got.items():
                samples[name].append(value)
            ratios.append(got["other"] / got["this"])
        print(f"| {op} | {statistics.median(samples['this']):.3f} | {statistics.median(samples['other']):.3f} "
              f"| {statistics.median(ratios):.3f} |")
    for side in sides.values():
        side.close()
    return 0


def print_opcodes(sides: dict[str, Side], ops: list[str], requests: int, warm_up: int) -> None:
    print(f"Python opcodes per request, over {requests} requests after {warm_up} to warm up\n")
    print("| operation | this | other | this ÷ other |\n|---|---:|---:|---:|")
    for op in ops:
        counts = {}
        for name, side in sides.items():
            side.chunk(op, warm_up)
            counts[name] = side.chunk(op, requests, "opcodes")
        print(f"| {op} | {counts['this']:,.0f} | {counts['other']:,.0f} | {counts['this'] / counts['other']:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
