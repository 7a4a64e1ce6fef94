"""The scheduler's entry points, and the jobs ``serve`` and ``demo`` run in their own process.

Each domain keeps its scheduled work in its ``jobs.py`` (performance refresh and label expiry,
the retrain-trigger scan, the retraining job, the PCCP gate, the change log's checkpoint and
verification, the nightly drift reports), each a boundary (``logging.job_boundary``): a failure
is logged and the next run tries again.

The ``*_job`` functions here are what ``radsentry scheduler`` runs. APScheduler's job store
keeps them as ``"monitor.service.jobs:<name>"`` references with plain arguments (never an engine
or a secret), so each builds its settings and an engine of its own when it runs, and none may
be renamed or moved: a store written by an earlier version must still find them
(tests/integration/test_scheduler.py loads one).

:func:`start_jobs` is the in-process scheduler of ``serve`` and ``demo`` (one per process; with
``radsentry scheduler`` deployed, run ``serve --no-jobs``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from sqlalchemy import Engine

from monitor.service import embedded_pg
from monitor.service.db import engine_scope
from monitor.service.settings import PerformanceSettings, RetrainSettings, Settings


def with_own_engine(action: Callable[[Engine, Settings], object], database_url: str | None) -> None:
    """Run ``action`` on this process's settings and an engine of its own: the job store keeps
    only references and plain arguments, so each run builds what it needs."""
    settings = Settings()
    with engine_scope(database_url or embedded_pg.database_url(settings), migrate=False) as engine:
        action(engine, settings)


def retrain_triggers_job(database_url: str | None = None) -> None:
    """The retrain-trigger scan (``retrain.jobs.consider_retraining``)."""
    from monitor.service.retrain.jobs import consider_retraining

    with_own_engine(lambda engine, s: consider_retraining(engine, s.retrain), database_url)


def retrain_requests_job(database_url: str | None = None) -> None:
    """The retraining job (``retrain.jobs.serve_retrain_requests``)."""
    from monitor.service.retrain.jobs import serve_retrain_requests

    with_own_engine(serve_retrain_requests, database_url)


def pccp_gate_job(database_url: str | None = None) -> None:
    """The PCCP gate on candidates it has not evaluated (``pccp.jobs.evaluate_candidates``)."""
    from monitor.service.pccp.jobs import evaluate_candidates

    with_own_engine(evaluate_candidates, database_url)


def audit_checkpoint_job(database_url: str | None = None) -> None:
    """The daily signed checkpoint (``audit.jobs.sign_change_log``)."""
    from monitor.service.audit.jobs import sign_change_log

    with_own_engine(sign_change_log, database_url)


def audit_verify_job(database_url: str | None = None) -> None:
    """The change log's verification, every 15 minutes by default
    (``audit.jobs.verify_change_log``)."""
    from monitor.service.audit.jobs import verify_change_log

    with_own_engine(verify_change_log, database_url)


def refresh_performance_job(database_url: str | None = None) -> None:
    """Label expiry and the performance refresh (``performance.jobs.refresh_performance``)."""
    from monitor.service.performance.jobs import refresh_performance

    with_own_engine(lambda engine, s: refresh_performance(engine, s.performance), database_url)


def verify_performance_job(database_url: str | None = None) -> None:
    """The daily check of the performance statistics against the raw rows
    (``performance.jobs.verify_performance``)."""
    from monitor.service.performance.jobs import verify_performance

    with_own_engine(lambda engine, s: verify_performance(engine, s.performance), database_url)


def nightly_drift_reports_job(reports_dir: str, database_url: str | None = None) -> None:
    """Today's site drift page of every stream under ``reports_dir``, with its Evidently
    appendix when configured (``drift.jobs.nightly_drift_reports``)."""
    from monitor.service.drift.jobs import nightly_drift_reports

    with_own_engine(
        lambda engine, s: nightly_drift_reports(engine, s, Path(reports_dir)), database_url
    )


def start_jobs(
    engine: Engine, settings: PerformanceSettings, retrain: RetrainSettings | None = None
) -> BackgroundScheduler:
    """Start the scheduler with the refresh job (first run now) and, given ``retrain``, the
    retrain-trigger scan; the caller shuts it down."""
    from monitor.service.performance.jobs import refresh_performance
    from monitor.service.retrain.jobs import consider_retraining

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
    if retrain is not None:
        scheduler.add_job(
            consider_retraining,
            "interval",
            seconds=retrain.scan_s,
            args=(engine, retrain),
            id="retrain-triggers",
            max_instances=1,
            coalesce=True,
        )
    scheduler.start()
    return scheduler
