"""``sluice api``: serve the API under gunicorn (the production server; the Procfile and the container
image run the same), with the gthread worker that spreads connections evenly over the processes
(``api.gunicorn_worker``), gunicorn's own lines as JSON (``api.gunicorn_logging``), no access log (the
request log writes one line per request) and no control socket (nothing to write under ``$HOME`` on a
read-only root filesystem). With ``SLUICE_API_METRICS_PORT`` set, a second listener on that port serves
``/metrics``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from shared.config import Settings
from shared.metrics import prepare_multiprocess_dir


def gunicorn_args(settings: Settings, env: Mapping[str, str], argv: list[str]) -> list[str]:
    """The gunicorn command line ``sluice api`` runs (``argv``: extra gunicorn flags)."""
    bind = env.get("SLUICE_API_BIND", f"0.0.0.0:{env.get('PORT', '8080')}")
    binds = ["--bind", bind]
    if settings.api_metrics_port is not None:
        host = bind.rsplit(":", 1)[0] if ":" in bind and not bind.startswith("unix:") else "0.0.0.0"
        binds += ["--bind", f"{host}:{settings.api_metrics_port}"]
    return ["gunicorn", *binds, "--workers", env.get("SLUICE_API_WORKERS", "2"),
            "--threads", env.get("SLUICE_API_THREADS", "8"),
            "--worker-class", "api.gunicorn_worker.BalancedThreadWorker",
            "--logger-class", "api.gunicorn_logging.JsonLogger", "--error-logfile", "-",
            "--no-control-socket", "--worker-tmp-dir", _worker_tmp_dir(),
            "--graceful-timeout", "30", *argv, "api.wsgi:app"]


def _worker_tmp_dir() -> str:
    """gunicorn's heartbeat files: in memory where the system has /dev/shm (containers do), else the default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    prepare_multiprocess_dir()  # gunicorn's worker processes merge their samples in /metrics
    args = gunicorn_args(settings, os.environ, argv)
    os.execvp(sys.executable, [sys.executable, "-m", *args])
    return 0  # not reached
