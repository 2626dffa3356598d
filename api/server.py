"""``sluice api``: serve the API under gunicorn (the production server; the Procfile runs the same), with
the gthread worker that spreads connections evenly over the processes (``api.gunicorn_worker``)."""

from __future__ import annotations

import os
import sys

from shared.config import Settings
from shared.metrics import prepare_multiprocess_dir


def main(argv: list[str]) -> int:
    # No secret key: one line and exit code 2 here (ConfigError), rather than every gunicorn worker failing to boot.
    Settings.from_env().secret_box  # noqa: B018
    prepare_multiprocess_dir()  # gunicorn's worker processes merge their samples in /metrics
    bind = os.environ.get("SLUICE_API_BIND", f"0.0.0.0:{os.environ.get('PORT', '8080')}")
    args = ["gunicorn", "--bind", bind, "--workers", os.environ.get("SLUICE_API_WORKERS", "2"),
            "--threads", os.environ.get("SLUICE_API_THREADS", "8"),
            "--worker-class", "api.gunicorn_worker.BalancedThreadWorker",
            "--graceful-timeout", "30", *argv, "api.wsgi:app"]
    os.execvp(sys.executable, [sys.executable, "-m", *args])
    return 0  # not reached
