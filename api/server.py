"""``sluice api``: serve the API under gunicorn (the production server; the Procfile and the container
image run the same), with the gthread worker that spreads connections evenly over the processes
(``api.gunicorn_worker``), gunicorn's own lines as JSON (``api.gunicorn_logging``), no access log (the
request log writes one line per request) and no control socket (nothing to write under ``$HOME`` on a
read-only root filesystem). With ``SLUICE_API_METRICS_PORT`` set, a second listener on that port serves
``/metrics``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from shared.config import Settings
from shared.metrics import prepare_multiprocess_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice api", description="Serve the Sluice HTTP API under gunicorn.",
        epilog="Any other option is passed to gunicorn as it is (for example --graceful-timeout 5); see "
               "gunicorn's documentation.")
    parser.add_argument("--bind", default=None, metavar="HOST:PORT",
                        help="address to listen on (default SLUICE_API_BIND, else 0.0.0.0:$PORT, else 0.0.0.0:8080)")
    parser.add_argument("--workers", default=None, metavar="N",
                        help="processes (default SLUICE_API_WORKERS, else 2)")
    parser.add_argument("--threads", default=None, metavar="N",
                        help="threads per process (default SLUICE_API_THREADS, else 8)")
    return parser


def gunicorn_args(settings: Settings, env: Mapping[str, str], options: argparse.Namespace,
                  passed_on: list[str]) -> list[str]:
    """The gunicorn command line ``sluice api`` runs (``passed_on``: extra gunicorn flags)."""
    bind = options.bind or env.get("SLUICE_API_BIND", f"0.0.0.0:{env.get('PORT', '8080')}")
    binds = ["--bind", bind]
    if settings.api_metrics_port is not None:
        host = bind.rsplit(":", 1)[0] if ":" in bind and not bind.startswith("unix:") else "0.0.0.0"
        binds += ["--bind", f"{host}:{settings.api_metrics_port}"]
    return ["gunicorn", *binds, "--workers", options.workers or env.get("SLUICE_API_WORKERS", "2"),
            "--threads", options.threads or env.get("SLUICE_API_THREADS", "8"),
            "--worker-class", "api.gunicorn_worker.BalancedThreadWorker",
            "--logger-class", "api.gunicorn_logging.JsonLogger", "--error-logfile", "-",
            "--no-control-socket", "--worker-tmp-dir", _worker_tmp_dir(),
            "--graceful-timeout", "30",
            # X-Forwarded-* are honoured by the app, from SLUICE_TRUSTED_PROXIES only (api.forwarded), not
            # also by gunicorn (which would trust X-Forwarded-Proto from 127.0.0.1 by default)
            "--forwarded-allow-ips", "", *passed_on, "api.wsgi:app"]


def _worker_tmp_dir() -> str:
    """gunicorn's heartbeat files: in memory where the system has /dev/shm (containers do), else the default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"


def main(argv: list[str]) -> int:
    options, passed_on = _parser().parse_known_args(argv)  # --help prints and exits before anything starts
    settings = Settings.from_env()
    # No secret key: one line and exit code 2 here (ConfigError), rather than every gunicorn worker failing to boot.
    settings.secret_box  # noqa: B018
    prepare_multiprocess_dir()  # gunicorn's worker processes merge their samples in /metrics
    args = gunicorn_args(settings, os.environ, options, passed_on)
    os.execvp(sys.executable, [sys.executable, "-m", *args])
    return 0  # not reached
