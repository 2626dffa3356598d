"""A closed-loop HTTP load generator for the API benchmarks: ``wrk`` (C, event loop) when it is installed.

On this two-core machine the client shares the CPU with the servers, PostgreSQL and Redis. A Python
client (32 threads of ``http.client``) needs ~0.3 ms of CPU per request and holds the GIL, so it eats a
large part of one core and caps *every* server it measures, the bare reference included. ``wrk`` needs a
few µs per request, so the servers get the machine. Both sides of a comparison use the same client.
Install with ``apt-get install wrk``; the benchmarks fall back to their Python client without it.

Each request is built by a small Lua function (``request_lua``: the body of wrk's ``request()``, which
has ``n`` = a per-connection-thread counter and ``tid`` = the wrk thread's number, and must return
``wrk.format(method, path, nil, body)``). Only 2xx responses count; latencies are wrk's per-request
times (connection is keep-alive), p50/p99 from its HdrHistogram.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
local counter = 0
local thread_no = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  %(init)s
end
function request()
  counter = counter + 1
  local n = counter
  %(request)s
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%d,"duration_us":%%d,"non2xx":%%d,"socket_errors":%%d,'
    .. '"p50_us":%%d,"p99_us":%%d}\\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    secs: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def ok(self) -> int:
        return self.requests - self.errors

    @property
    def rate(self) -> float:
        return self.ok / self.secs if self.secs else 0.0


def available() -> bool:
    return shutil.which("wrk") is not None


def run(port: int, headers: dict[str, str], request_lua: str, *, clients: int, secs: float,
        threads: int = 2, init_lua: str = "") -> WrkResult:
    """Drive ``http://127.0.0.1:port`` with ``clients`` keep-alive connections for ``secs`` seconds."""
    header_lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    script = _SCRIPT % {"init": header_lines + "\n" + init_lua, "request": request_lua}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        completed = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{secs:g}s", "--timeout", "30s", "-s",
             handle.name, f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    line = next((x for x in completed.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {completed.stdout[-500:]} {completed.stderr[-500:]}")
    data = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(requests=data["requests"], secs=data["duration_us"] / 1e6,
                     errors=data["non2xx"] + data["socket_errors"], p50_ms=data["p50_us"] / 1000,
                     p99_ms=data["p99_us"] / 1000)
