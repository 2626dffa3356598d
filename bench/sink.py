"""A fast HTTP sink for benchmarks and crash tests: answers every POST at once with ``200 ok``.

Runs in its own process (``python -m bench.sink --port 0 --ready-file F``) on an asyncio loop. Connections
are kept alive, as by any HTTP/1.1 server, unless the client asks to close them (``Connection: close``).
Each POST is recorded as
``(X-Sluice-Run-Id, X-Sluice-Attempt, arrival unix time)``. ``GET /records`` returns the records as JSON
and clears them; ``GET /count`` returns how many are held. ``--delay-secs`` makes every answer slow (crash
tests need attempts that are in flight when a worker is killed). The sink stops by itself once the process
that started it is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
_OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Sink:
    def __init__(self, delay_secs: float) -> None:
        self.delay_secs = delay_secs
        self.records: list[tuple[str, str, float]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._answer(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; whether the connection stays open for the next one."""
        head = await reader.readuntil(b"\r\n\r\n")
        arrived = time.time()
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await reader.readexactly(length)
        if method == "GET":
            await self._control(path, writer)
            return False
        self.records.append((headers.get("x-sluice-run-id", ""), headers.get("x-sluice-attempt", ""), arrived))
        if self.delay_secs:
            await asyncio.sleep(self.delay_secs)
        keep = headers.get("connection", "").lower() != "close"
        writer.write(_OK if keep else _OK_CLOSE)
        await writer.drain()
        return keep

    async def _control(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path == "/records":
            records, self.records = self.records, []
            body = json.dumps(records).encode()
        else:
            body = json.dumps({"count": len(self.records)}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()


async def _serve(port: int, delay_secs: float, ready_file: str | None) -> None:
    sink = Sink(delay_secs)
    server = await asyncio.start_server(sink.handle, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    if ready_file:
        tmp = Path(ready_file + ".tmp")
        tmp.write_text(str(bound))
        os.replace(tmp, ready_file)
    else:
        print(bound, flush=True)
    async with server:
        await _until_orphaned()


async def _until_orphaned() -> None:
    """Serve while the process that started the sink lives: a benchmark stopped by a signal, which runs
    no cleanup, leaves no sink behind (an orphan is re-parented, so its parent pid changes)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-secs", type=float, default=0.0)
    parser.add_argument("--ready-file", default=None, help="write the bound port here once listening")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.delay_secs, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
