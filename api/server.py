"""``sluice api``: serve the API under gunicorn (the production server; the Procfile runs the same), with
the gthread worker that spreads connections evenly over the processes (``api.gunicorn_worker``)."""

from __future__ import annotations

import os
import sys

from shared.metrics import prepare_multiprocess_dir


def main(argv: list[str]) -> int:
    prepare_multiprocess_dir()  # gunicorn's worker processes merge their samples in /metrics
    bind = os.environ.get("SLUICE_API_BIND", f"0.0.0.0:{os.environ.get('PORT', '8080')}")
    args = ["gunicorn", "--bind", bind, "--workers", os.environ.get("SLUICE_API_WORKERS", "2"),
            "--threads", os.environ.get("SLUICE_API_THREADS", "8"),
            "--worker-class", "api.gunicorn_worker.BalancedThreadWorker",
            "--graceful-timeout", "30",
            # X-Forwarded-* are honoured by the app, from SLUICE_TRUSTED_PROXIES only (api.forwarded), not
            # also by gunicorn (which would trust X-Forwarded-Proto from 127.0.0.1 by default)
            "--forwarded-allow-ips", "", *argv, "api.wsgi:app"]
    os.execvp(sys.executable, [sys.executable, "-m", *args])
    return 0  # not reached
