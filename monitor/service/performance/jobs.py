"""The performance domain's scheduled job: label expiry, then every snapshot recomputed.

Entry points that the scheduler stores by reference are in ``monitor/service/jobs.py``.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import Engine

from monitor.service.logging import job_boundary
from monitor.service.settings import PerformanceSettings

log = structlog.get_logger(__name__)


@job_boundary("performance refresh failed")
def refresh_performance(engine: Engine, settings: PerformanceSettings) -> None:
    """Expire unmatched labels past the horizon, then recompute every performance snapshot."""
    # Imported here: the metrics pull in statsmodels, seconds to import, only when a job runs.
    from monitor.service.performance.labels import expire_unmatched
    from monitor.service.performance.store import refresh

    expired = expire_unmatched(engine, timedelta(days=settings.label_horizon_days))
    snapshots = refresh(engine, settings)
    log.info("performance refreshed", snapshots=len(snapshots), labels_expired=expired)
