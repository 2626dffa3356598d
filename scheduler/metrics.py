"""Prometheus metrics of the cron scheduler, registered on the default registry at first import.

The process that exposes metrics (``/metrics`` of the scheduler, owned by ops) serves whatever the
default registry holds; this module only defines and updates. Cron runs created are counted with every
other run in ``sluice_runs_created{triggered_by="cron"}`` (``shared.metrics``).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SCHEDULE_LAG = Histogram(
    "sluice_schedule_lag_seconds",
    "Seconds from a cron tick to its run being created and enqueued (catch-up runs included).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)

TICKS_SKIPPED = Counter(
    "sluice_cron_ticks_skipped_total",
    "Cron ticks that created no run because they were missed: `beyond_grace` is a job's latest "
    "missed tick older than SLUICE_CRON_MISFIRE_GRACE_SECS, `superseded` an earlier missed tick.",
    ["reason"],
)
