"""Periodic jobs of the service (APScheduler): performance refresh and label expiry, the
retrain-trigger scan, the retraining job, the PCCP gate, the change log's checkpoints and its
verification.

They run in ``radsentry serve`` and ``radsentry demo`` (one scheduler per process; run one
``serve`` with jobs per deployment, or accept duplicate snapshot rows). Each job is a boundary:
a failure is logged with its context and the next run tries again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from sqlalchemy import Engine

from monitor.service.settings import PerformanceSettings, RetrainSettings, Settings

if TYPE_CHECKING:
    from monitor.service.gate_job import GateContext, GateRegistry

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


def consider_retraining(engine: Engine, settings: RetrainSettings) -> None:
    """Turn active alerts into retrain requests where the retraining policy says so."""
    from monitor.service.retrain_store import consider_alerts

    try:
        created = consider_alerts(engine, settings.policy)
    except Exception:
        # Boundary: a failed scan must not stop the scheduler; the next run retries.
        log.exception("retrain scan failed")
        return
    if created:
        log.info("retrain requests created", count=len(created))


def with_own_engine(action: Callable[[Engine, Settings], object], database_url: str | None) -> None:
    """Run ``action`` on this process's settings and a fresh engine (scheduler jobs are stored
    as plain references and arguments, so they build what they need when they run)."""
    from monitor.service.db import make_engine

    settings = Settings()
    engine = make_engine(database_url or settings.database_url)
    try:
        action(engine, settings)
    finally:
        engine.dispose()


def retrain_triggers_job(database_url: str | None = None) -> None:
    """The retrain-trigger scan as a scheduler job."""
    with_own_engine(lambda engine, s: consider_retraining(engine, s.retrain), database_url)


def serve_retrain_requests(engine: Engine, settings: Settings) -> None:
    """Serve pending retrain requests (``retrain_job.serve_pending``) with the configured
    registry; each request ends succeeded, failed or back to pending, whatever happens."""
    from monitor.service.registry import registry_for
    from monitor.service.retrain_job import JobContext, serve_pending
    from retrain.images import DicomWebClientSource

    registry = registry_for(settings)
    context = JobContext(
        engine=engine,
        registry=registry,
        config=settings.retrain.job,
        work_dir=(settings.data_dir / "retrain").resolve(),
        dicomweb=DicomWebClientSource(),
        lease=timedelta(seconds=settings.retrain.lease_s),
        gate=gate_context(engine, settings, registry),
    )
    try:
        served = serve_pending(context)
    except Exception:
        # Boundary: claiming failed (database down); the next run retries.
        log.exception("retrain job failed to claim requests")
        return
    if served:
        log.info("retrain requests served", count=len(served))


def retrain_requests_job(database_url: str | None = None) -> None:
    """The retraining job as a scheduler job."""
    with_own_engine(serve_retrain_requests, database_url)


def gate_context(engine: Engine, settings: Settings, registry: GateRegistry) -> GateContext:
    """The PCCP gate's context from the settings."""
    from monitor.service.gate_job import GateContext

    return GateContext(
        engine=engine,
        registry=registry,
        plans_dir=settings.plans_dir,
        locked_cases_dir=settings.locked_cases_dir,
        image_workers=settings.pccp.image_workers,
    )


def evaluate_candidates(engine: Engine, settings: Settings) -> None:
    """Run the PCCP gate on candidates it has not evaluated (a retrain's gate that could not
    run, or a candidate proposed by hand)."""
    from monitor.service.gate_job import evaluate_pending
    from monitor.service.registry import registry_for

    try:
        evaluated = evaluate_pending(gate_context(engine, settings, registry_for(settings)))
    except Exception:
        # Boundary: the database or the plans folder is unreadable; the next run retries.
        log.exception("PCCP gate job failed")
        return
    if evaluated:
        log.info("candidates evaluated", count=len(evaluated))


def pccp_gate_job(database_url: str | None = None) -> None:
    """The PCCP gate as a scheduler job."""
    with_own_engine(evaluate_candidates, database_url)


def sign_change_log(engine: Engine, settings: Settings) -> None:
    """Sign the change log's head (a no-op when it is already signed or empty)."""
    from monitor.service.change_log_signing import checkpoint, signing_key

    try:
        checkpoint(engine, signing_key(settings))
    except Exception:
        # Boundary: a broken chain or a missing key is logged loudly; the next run retries.
        log.exception("change log checkpoint failed")


def audit_checkpoint_job(database_url: str | None = None) -> None:
    """The daily signed checkpoint as a scheduler job."""
    with_own_engine(sign_change_log, database_url)


def verify_change_log(engine: Engine, settings: Settings) -> bool | None:
    """Verify the change log's chain and its signed checkpoints and export the outcome
    (``radsentry_audit_chain_ok``, ``radsentry_audit_chain_last_verified_timestamp_seconds``).

    Returns whether both held; None when the check could not run (database down, signing key
    missing): the gauges keep their last values, and the stale timestamp alerts.
    """
    from monitor.service import change_log, metrics
    from monitor.service.change_log_signing import signing_key, verify_checkpoints

    try:
        chain = change_log.verify(engine)
        problems = verify_checkpoints(engine, signing_key(settings).public_key())
    except Exception:
        # Boundary: the next run tries again; meanwhile the last verification grows old.
        log.exception("change log verification could not run")
        return None
    ok = chain.ok and not problems
    metrics.AUDIT_CHAIN_OK.set(1.0 if ok else 0.0)
    metrics.AUDIT_CHAIN_LAST_VERIFIED.set(datetime.now(UTC).timestamp())
    if ok:
        log.info("change log verified", entries=chain.entries)
    else:
        log.error(
            "change log verification failed",
            first_bad_seq=chain.first_bad_seq,
            problem=chain.problem,
            checkpoint_problems=problems,
        )
    return ok


def audit_verify_job(database_url: str | None = None) -> None:
    """The change log's verification (every 15 minutes by default) as a scheduler job."""
    with_own_engine(verify_change_log, database_url)


def start_jobs(
    engine: Engine, settings: PerformanceSettings, retrain: RetrainSettings | None = None
) -> BackgroundScheduler:
    """Start the scheduler with the refresh job (first run now) and, given ``retrain``, the
    retrain-trigger scan; the caller shuts it down."""
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
