"""``sluice api``: serve the API under gunicorn (the production server; the Procfile runs the same), with
the gthread worker that spreads connections evenly over the processes (``api.gunicorn_worker``)."""

from __future__ import annotations

import argparse
import os
import sys

from shared.metrics import prepare_multiprocess_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice api", description="Serve the Sluice HTTP API under gunicorn.",
        epilog="Any other option is passed to gunicorn as it is (for example --graceful-timeout 5 or "
               "--access-logfile -); see gunicorn's documentation.")
    parser.add_argument("--bind", default=None, metavar="HOST:PORT",
                        help="address to listen on (default SLUICE_API_BIND, else 0.0.0.0:$PORT, else 0.0.0.0:8080)")
    parser.add_argument("--workers", default=None, metavar="N",
                        help="processes (default SLUICE_API_WORKERS, else 2)")
    parser.add_argument("--threads", default=None, metavar="N",
                        help="threads per process (default SLUICE_API_THREADS, else 8)")
    return parser


def main(argv: list[str]) -> int:
    args, passed_on = _parser().parse_known_args(argv)
    prepare_multiprocess_dir()  # gunicorn's worker processes merge their samples in /metrics
    bind = args.bind or os.environ.get("SLUICE_API_BIND", f"0.0.0.0:{os.environ.get('PORT', '8080')}")
    command = ["gunicorn", "--bind", bind, "--workers", args.workers or os.environ.get("SLUICE_API_WORKERS", "2"),
               "--threads", args.threads or os.environ.get("SLUICE_API_THREADS", "8"),
               "--worker-class", "api.gunicorn_worker.BalancedThreadWorker",
               "--graceful-timeout", "30", *passed_on, "api.wsgi:app"]
    os.execvp(sys.executable, [sys.executable, "-m", *command])
    return 0  # not reached
