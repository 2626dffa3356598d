"""Endpoint-call benchmark: this tree's HTTP client against the one before it, in the same run.

Four local sinks, each in its own process (asyncio, answers every POST with ``200 {"ok":true}``):
HTTPS and HTTP that keep connections alive (as most servers do), HTTP that closes each connection
(what a ``Connection: close`` server costs), and HTTP kept alive but called by a host name (``localhost``:
the client's name-lookup step runs on every call; the lookup itself is the benchmark's, and instant).
The HTTPS sink's certificate comes from a throw-away CA that both clients are told to trust (the old one
through an ``SSLContext``, the new one as ``SLUICE_CA_BUNDLE`` would give it).

Each measurement runs in a child process that imports ``worker.http`` from one tree: this one, or the
revision ``--before`` (default ``78e4088``, the tree before issue #13) extracted with ``git archive`` into a
temporary directory. A child makes ``--calls`` sequential calls per sink (after a warm-up) and reports
calls/s, p50/p99 latency and the CPU time per call of the client and of the sink (on a shared machine CPU
is steadier than wall time).
Rounds alternate old and new; the table shows medians of ``--rounds`` rounds and new/old ratios.

``python bench/endpoint_calls.py`` (1 000 calls × 3 rounds) or ``--calls 200 --rounds 1`` for a smoke check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SINKS = (("https", "HTTPS, kept alive"), ("http", "HTTP, kept alive"), ("close", "HTTP, server closes"),
         ("named", "HTTP, kept alive, by host name"))
WARMUP_CALLS = 50
BODY = b'{"order": 42}'


# --- the sink (child process) -------------------------------------------------------------------------

async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool) -> None:
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
             + (b"Connection: close\r\n" if close else b"") + b"\r\n{\"ok\":true}")
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(reply)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(kind: str, cert: str, key: str, ready: str) -> None:
    import ssl

    context = None
    if kind == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: _answer(r, w, kind == "close"), "127.0.0.1", 0,
                                        ssl=context, backlog=1024)
    Path(ready + ".tmp").write_text(str(server.sockets[0].getsockname()[1]))
    os.replace(ready + ".tmp", ready)
    async with server:
        await server.serve_forever()


# --- one measurement (child process, with one tree first on sys.path) ----------------------------------

def _cpu_secs(pid: int) -> float:
    """utime + stime of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(tree: str, sinks: dict[str, list[int]], ca: str, calls: int) -> dict[str, Any]:
    sys.path.insert(0, tree)
    import ssl

    import worker.http as client_module

    assert client_module.__file__ is not None and client_module.__file__.startswith(tree), client_module.__file__
    if hasattr(client_module, "HttpClient"):
        from worker.transport import trust_store

        post = client_module.HttpClient(trust_store(ca), pool_size=1).post
    else:  # the hand-written client: one connection per call, TLS context passed in
        context = ssl.create_default_context(cafile=ca)

        def post(*args: Any, **kwargs: Any) -> Any:
            return client_module.post(*args, ssl_context=context, **kwargs)

    results = {}
    for kind, _ in SINKS:
        port, sink_pid = sinks[kind]
        host = "localhost" if kind == "named" else "127.0.0.1"  # a name goes through the client's lookup step
        url = f"{'https' if kind == 'https' else 'http'}://{host}:{port}/hook"

        def resolve(_url: str, host: str = host, port: int = port) -> tuple[str, int, list[str]]:
            return host, port, ["127.0.0.1"]

        def one(url: str = url, resolve: Any = resolve) -> float:
            started = time.perf_counter()
            result = post(url, BODY, {"Content-Type": "application/json", "User-Agent": "sluice/bench"},
                          deadline=time.monotonic() + 30, resolve=resolve, now=lambda: None)
            assert result.status == 200, result.outcome
            return time.perf_counter() - started

        for _ in range(WARMUP_CALLS):
            one()
        started, cpu, sink_cpu = time.perf_counter(), time.process_time(), _cpu_secs(sink_pid)
        latencies = sorted(one() for _ in range(calls))
        elapsed = time.perf_counter() - started
        results[kind] = {"calls_per_sec": calls / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000,
                         "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
                         "client_cpu_us": (time.process_time() - cpu) / calls * 1e6,
                         "sink_cpu_us": (_cpu_secs(sink_pid) - sink_cpu) / calls * 1e6}
    return results


# --- the driver ----------------------------------------------------------------------------------------

def _self_signed(directory: Path) -> tuple[str, str]:
    """A CA-flagged self-signed certificate for 127.0.0.1 (the sink's) and its key."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice bench sink")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "sink.pem", directory / "sink.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _start_sink(kind: str, cert: str, key: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = directory / f"{kind}.port"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--cert", cert, "--key", key,
                             "--ready", str(ready)])
    deadline = time.monotonic() + 15
    while not ready.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{kind} sink did not start")
        time.sleep(0.05)
    return proc, int(ready.read_text())


def _extract(tag: str, directory: Path) -> str:
    """The ``worker`` and ``shared`` packages of ``tag``, unpacked under ``directory``."""
    tree = directory / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", tag, "worker", "shared"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return str(tree)


def _run_child(tree: str, sinks: dict[str, list[int]], ca: str, calls: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--measure", tree, "--sinks", json.dumps(sinks), "--cert", ca,
                          "--calls", str(calls)], check=True, capture_output=True, text=True, cwd=tree)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _table(rounds: list[dict[str, dict[str, Any]]]) -> str:
    def median(client: str, kind: str, field: str) -> float:
        return statistics.median(r[client][kind][field] for r in rounds)

    lines = ["| sink | calls/s before | calls/s now | ratio | p50 / p99 ms before | p50 / p99 ms now "
             "| CPU µs/call before (client + sink) | CPU µs/call now (client + sink) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, label in SINKS:
        old, new = median("before", kind, "calls_per_sec"), median("now", kind, "calls_per_sec")
        cpu = {who: (median(who, kind, "client_cpu_us"), median(who, kind, "sink_cpu_us")) for who in ("before", "now")}
        lines.append(f"| {label} | {old:,.0f} | {new:,.0f} | {new / old:.2f}x | "
                     f"{median('before', kind, 'p50_ms'):.2f} / {median('before', kind, 'p99_ms'):.2f} | "
                     f"{median('now', kind, 'p50_ms'):.2f} / {median('now', kind, 'p99_ms'):.2f} | "
                     + " | ".join(f"{sum(cpu[who]):.0f} ({cpu[who][0]:.0f} + {cpu[who][1]:.0f})"
                                  for who in ("before", "now")) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per sink and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="78e4088", help="git revision of the tree to compare against")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--sinks", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.cert, args.key, args.ready))
        return
    if args.measure:
        print(json.dumps(_measure(args.measure, json.loads(args.sinks), args.cert, args.calls)))
        return

    directory = Path(tempfile.mkdtemp(prefix="sluice-bench-calls-"))
    cert, key = _self_signed(directory)
    before = _extract(args.before, directory)
    sinks = {kind: _start_sink(kind, cert, key, directory) for kind, _ in SINKS}
    where = {kind: [port, proc.pid] for kind, (proc, port) in sinks.items()}
    rounds = []
    try:
        for number in range(1, args.rounds + 1):
            result = {"before": _run_child(before, where, cert, args.calls),
                      "now": _run_child(str(ROOT), where, cert, args.calls)}
            rounds.append(result)
            rates = [f"{kind} {result['before'][kind]['calls_per_sec']:,.0f} -> "
                     f"{result['now'][kind]['calls_per_sec']:,.0f}/s" for kind, _ in SINKS]
            print(f"round {number}: " + ", ".join(rates), flush=True)
    finally:
        for proc, _ in sinks.values():
            proc.terminate()
            proc.wait(10)
    print(f"\n{args.calls} sequential calls per sink and round, one thread; medians of {args.rounds} rounds "
          f"(before = {args.before})\n")
    print(_table(rounds))


if __name__ == "__main__":
    main()
