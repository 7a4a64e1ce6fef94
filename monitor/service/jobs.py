"""Periodic jobs of the service (APScheduler): performance refresh and label expiry.

They run in ``radsentry serve`` and ``radsentry demo`` (one scheduler per process; run one
``serve`` with jobs per deployment, or accept duplicate snapshot rows). Each job is a boundary:
a failure is logged with its context and the next run tries again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from sqlalchemy import Engine

from monitor.service.settings import PerformanceSettings

log = structlog.get_logger(__name__)


def refresh_performance(engine: Engine, settings: PerformanceSettings) -> None:
    """Expire unmatched labels past the horizon, then recompute every performance snapshot."""
    # Imported here: the metrics pull in statsmodels, seconds to import, only when a job runs.
    from monitor.service.labels_store import expire_unmatched
    from monitor.service.performance_store import refresh

    try:
        expired = expire_unmatched(engine, timedelta(days=settings.label_horizon_days))
        snapshots = refresh(engine, settings)
    except Exception:
        # Boundary: a failed refresh must not stop the scheduler; the next run retries.
        log.exception("performance refresh failed")
        return
    log.info("performance refreshed", snapshots=len(snapshots), labels_expired=expired)


def start_jobs(engine: Engine, settings: PerformanceSettings) -> BackgroundScheduler:
    """Start the scheduler with the refresh job (first run now); the caller shuts it down."""
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        refresh_performance,
        "interval",
        seconds=settings.refresh_s,
        args=(engine, settings),
        id="performance-refresh",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.start()
    return scheduler
