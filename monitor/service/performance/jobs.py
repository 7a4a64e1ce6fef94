"""The performance domain's scheduled jobs: label expiry and every snapshot recomputed; the
daily verification of the sufficient statistics against the raw rows.

Entry points that the scheduler stores by reference are in ``monitor/service/jobs.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Engine

from monitor.service.logging import job_boundary
from monitor.service.settings import PerformanceSettings

log = structlog.get_logger(__name__)

_CACHES: dict[str, Any] = {}
"""Per database, the ``RefreshCache`` of this process's refreshes (the scheduler's leader runs
them; a process that starts or takes over recomputes every stream once)."""


@job_boundary("performance refresh failed")
def refresh_performance(engine: Engine, settings: PerformanceSettings) -> None:
    """Expire unmatched labels past the horizon, then recompute every performance snapshot."""
    # Imported here: the metrics pull in statsmodels, seconds to import, only when a job runs.
    from monitor.service.performance.labels import expire_unmatched
    from monitor.service.performance.store import RefreshCache, refresh

    expired = expire_unmatched(engine, timedelta(days=settings.label_horizon_days))
    cache = _CACHES.setdefault(engine.url.render_as_string(hide_password=True), RefreshCache())
    snapshots = refresh(engine, settings, cache=cache)
    log.info("performance refreshed", snapshots=len(snapshots), labels_expired=expired)
    refresh_health(engine, settings)


@job_boundary("health refresh failed")
def refresh_health(engine: Engine, settings: PerformanceSettings) -> None:
    """Every stream's health score into the gauges (after the refresh: the labels it reads)."""
    from monitor.service.performance.health import all_health, export_gauges

    found = all_health(engine, settings.health)
    export_gauges(found)
    log.info("health refreshed", streams=len(found))


@job_boundary("performance verification failed")
def verify_performance(engine: Engine, settings: PerformanceSettings) -> int:
    """Recompute every cumulative window from the raw rows (the exact path) and compare it
    with its sufficient statistics; log each mismatch, export how many windows differ;
    returns that number. ``radsentry performance verify`` runs the same comparison and
    ``radsentry performance rebuild`` mends what it finds.

    Reads every labelled prediction once a day: the price of checking the incremental path.
    """
    import time

    from monitor.service import metrics
    from monitor.service.performance.maintenance import mismatches

    found = mismatches(engine)
    for problem in found.problems:
        site_id, model_name, version = problem.stream
        log.warning(
            "performance statistics differ from the raw rows",
            site_id=site_id,
            model_name=model_name,
            model_version=version,
            finding=problem.finding,
            problem=problem.what,
            remedy="radsentry performance rebuild",
        )
    metrics.PERFORMANCE_SUMMARIES_MISMATCHED.set(found.mismatched)
    metrics.PERFORMANCE_SUMMARIES_LAST_VERIFIED.set(time.time())
    log.info("performance statistics verified", windows=found.windows, mismatched=found.mismatched)
    return found.mismatched
