"""The standalone scheduler (``radsentry scheduler``): persistent jobs, one leader at a time.

* APScheduler 3.x with its SQLAlchemy job store in the service database (table
  ``apscheduler_jobs``, APScheduler's, not Alembic's; ``radsentry migrate`` creates it as the
  schema's owner with :func:`create_job_store`, since the runtime role may create no table).
  Times are UTC.
* The standing jobs are data: a list of :class:`JobSpec` (explicit id, textual function
  reference ``"module:function"``, trigger, plain JSON-able args, misfire grace). The store
  pickles job state, so args are plain values, never an Engine, and no secret: the job
  functions read the database URL from ``Settings`` in the scheduler's process.
* Every job has ``coalesce=True`` and ``max_instances=1``: runs missed while no scheduler was
  up collapse into one run, made only if it is late by less than the job's misfire grace.
* At start, a stored job whose spec is unchanged keeps its stored next run time, so a failover
  or restart does not push the schedule back (a nightly report due during a switch still runs).
  A changed spec (the job's name carries the spec's fingerprint) replaces the stored job. Jobs
  no spec names are left alone: one-off jobs added with :func:`submit_job` live there too.
* One leader: the scheduler runs only while its process holds a PostgreSQL session-level
  advisory lock (:data:`LOCK_KEY`) on a dedicated connection. Another replica logs "another
  scheduler holds the lock; standing by" and polls every ``poll_s`` seconds; when the leader's
  session ends (stop, crash, killed pod) the standby takes over within ``poll_s``. The leader
  checks its lock's session every ``poll_s`` and, if it is gone, stops its jobs and stands by
  again (so two leaders can overlap by at most ``poll_s``; the jobs are idempotent). The same
  tick wakes the scheduler: jobs other processes add to the store start within ``poll_s``.

Knobs (the CLI passes them from settings): ``lock_key`` (default :data:`LOCK_KEY`), ``poll_s``
(standby poll and leader health check, default 5 s), and in :func:`default_jobs` the refresh
interval (300 s) and its misfire grace (300 s), the nightly report time (02:00 UTC) and its
grace (3600 s), and the reports directory.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from math import inf
from pathlib import Path
from typing import Literal

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped]
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore  # type: ignore[import-untyped]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from monitor.service import jobs
from monitor.service.db import make_engine
from monitor.service.health import Health
from monitor.service.models import JOB_STORE_TABLE

log = structlog.get_logger(__name__)

LOCK_KEY = int.from_bytes(b"RADSENTR", "big")
"""The advisory lock key (bigint) every scheduler replica of a database competes for."""
JOBS_TABLE = JOB_STORE_TABLE

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class JobSpec:
    """One standing job: what runs (``"module:function"``), when, with which plain args."""

    id: str
    func_ref: str
    trigger: Literal["interval", "cron", "date"]
    trigger_args: Mapping[str, Scalar] = field(default_factory=dict)
    args: tuple[Scalar, ...] = ()
    misfire_grace_time: int = 300
    """Seconds a run may start late (scheduler down, failover) and still run."""

    def fingerprint(self) -> str:
        """A short hash of the whole spec: a stored job with another one gets replaced."""
        document = [
            self.func_ref,
            self.trigger,
            dict(sorted(self.trigger_args.items())),
            list(self.args),
            self.misfire_grace_time,
        ]
        return hashlib.sha256(json.dumps(document).encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"{self.id} [{self.fingerprint()}]"


def default_jobs(
    reports_dir: str | Path,
    *,
    refresh_s: float = 300.0,
    refresh_grace_s: int = 300,
    report_hour: int = 2,
    report_minute: int = 0,
    report_grace_s: int = 3600,
    retrain_scan_s: float = 300.0,
    retrain_jobs_s: float = 60.0,
    checkpoint_hour: int = 1,
    gate_s: float = 120.0,
    audit_verify_s: float = 900.0,
) -> list[JobSpec]:
    """RadSentry's standing jobs: the performance refresh, the retrain-trigger scan, the
    retraining job, the PCCP gate, the nightly drift reports, the daily signed change-log
    checkpoint, the change log's verification (its outcome is a metric of this process) and the
    daily check of the performance statistics against the raw rows (an hour after the
    checkpoint).
    Extend by appending specs; ids must stay stable."""
    return [
        JobSpec(
            id="retrain-requests",
            func_ref="monitor.service.jobs:retrain_requests_job",
            trigger="interval",
            trigger_args={"seconds": retrain_jobs_s},
            misfire_grace_time=refresh_grace_s,
        ),
        JobSpec(
            id="pccp-gate",
            func_ref="monitor.service.jobs:pccp_gate_job",
            trigger="interval",
            trigger_args={"seconds": gate_s},
            misfire_grace_time=refresh_grace_s,
        ),
        JobSpec(
            id="retrain-triggers",
            func_ref="monitor.service.jobs:retrain_triggers_job",
            trigger="interval",
            trigger_args={"seconds": retrain_scan_s},
            misfire_grace_time=refresh_grace_s,
        ),
        JobSpec(
            id="performance-refresh",
            func_ref="monitor.service.scheduler:refresh_performance_job",
            trigger="interval",
            trigger_args={"seconds": refresh_s},
            misfire_grace_time=refresh_grace_s,
        ),
        JobSpec(
            id="audit-checkpoint",
            func_ref="monitor.service.jobs:audit_checkpoint_job",
            trigger="cron",
            trigger_args={"hour": checkpoint_hour, "minute": 0},
            misfire_grace_time=report_grace_s,
        ),
        JobSpec(
            id="performance-verify",
            func_ref="monitor.service.jobs:verify_performance_job",
            trigger="cron",
            trigger_args={"hour": (checkpoint_hour + 1) % 24, "minute": 30},
            misfire_grace_time=report_grace_s,
        ),
        JobSpec(
            id="audit-verify",
            func_ref="monitor.service.jobs:audit_verify_job",
            trigger="interval",
            trigger_args={"seconds": audit_verify_s},
            misfire_grace_time=refresh_grace_s,
        ),
        JobSpec(
            id="nightly-drift-reports",
            func_ref="monitor.service.scheduler:nightly_drift_reports",
            trigger="cron",
            trigger_args={"hour": report_hour, "minute": report_minute},
            args=(str(Path(reports_dir).resolve()),),
            misfire_grace_time=report_grace_s,
        ),
    ]


# Two of the standing jobs name this module in their references (``func_ref`` above), and job
# stores keep those references: these names stay, and the jobs themselves live in jobs.py.
refresh_performance_job = jobs.refresh_performance_job
nightly_drift_reports = jobs.nightly_drift_reports_job


@dataclass
class Leadership:
    """Held leadership: the connection whose session holds the lock."""

    connection: Connection
    key: int

    def alive(self) -> bool:
        """Whether the lock is still held: its session answers (a lost session lost the lock)."""
        try:
            self.connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True


@contextmanager
def leader_lock(
    engine: Engine,
    stop: threading.Event | None = None,
    *,
    key: int = LOCK_KEY,
    poll_s: float = 5.0,
    health: Health | None = None,
) -> Iterator[Leadership | None]:
    """Hold the scheduler lock for the ``with`` block; wait (standing by) until it is free,
    telling ``health`` of each try.

    Yields None when ``stop`` is set before the lock was acquired. On PostgreSQL the lock is
    a session-level advisory lock on a dedicated connection, released on exit (or by the
    server when the process dies).
    """
    connection = _acquire(engine, key, stop or threading.Event(), poll_s, health or Health(inf))
    if connection is None:
        yield None
        return
    try:
        yield Leadership(connection, key)
    finally:
        _release(connection, key)


def _acquire(
    engine: Engine, key: int, stop: threading.Event, poll_s: float, health: Health
) -> Connection | None:
    connection: Connection | None = None
    standing_by = False
    while not stop.is_set():
        try:
            if connection is None:
                # Autocommit: the lock is session-level; no transaction stays open for hours.
                connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if connection.scalar(
                text("SELECT pg_try_advisory_lock(CAST(:key AS bigint))"), {"key": key}
            ):
                log.info("scheduler lock acquired; leading", lock_key=key)
                return connection
            health.beat(True, state="standing by")
            if not standing_by:
                log.info("another scheduler holds the lock; standing by", lock_key=key)
                standing_by = True
        except SQLAlchemyError as exc:
            health.beat(False, state="database unreachable")
            log.warning("cannot reach the database for the scheduler lock", error=str(exc))
            if connection is not None:
                connection.invalidate()
                connection.close()
                connection = None
        stop.wait(poll_s)
    if connection is not None:
        connection.close()
    return None


def _release(connection: Connection, key: int) -> None:
    if connection.invalidated:  # the session is gone, and its lock with it
        connection.close()
        return
    try:
        connection.execute(text("SELECT pg_advisory_unlock(CAST(:key AS bigint))"), {"key": key})
        log.info("scheduler lock released", lock_key=key)
    except SQLAlchemyError:
        connection.invalidate()  # the session is gone, and its lock with it
    finally:
        connection.close()


def build_scheduler(engine: Engine) -> BackgroundScheduler:
    """A stopped scheduler on the database's job store (UTC, one instance per job, coalesce).

    The store gets an engine of its own on ``engine``'s URL: APScheduler disposes its store's
    engine at shutdown, which must not touch the caller's pool (nor the lock's connection).
    """
    store_engine = make_engine(engine.url.render_as_string(hide_password=False))
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=store_engine, tablename=JOBS_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=4)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        timezone=UTC,
    )


def create_job_store(engine: Engine) -> None:
    """Create the job store's table unless it exists (``radsentry migrate``, as the owner)."""
    SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE).jobs_t.create(engine, checkfirst=True)


def sync_jobs(scheduler: BackgroundScheduler, jobs: Sequence[JobSpec]) -> None:
    """Put ``jobs`` in the started scheduler's store; unchanged stored jobs keep their times."""
    for spec in jobs:
        stored = scheduler.get_job(spec.id)
        if stored is not None and stored.name == spec.name:
            log.info("job kept", job_id=spec.id, next_run=str(stored.next_run_time))
            continue
        scheduler.add_job(
            spec.func_ref,
            spec.trigger,
            args=list(spec.args),
            id=spec.id,
            name=spec.name,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=spec.misfire_grace_time,
            **spec.trigger_args,
        )
        log.info("job scheduled", job_id=spec.id, replaced=stored is not None)


def start_scheduler(scheduler: BackgroundScheduler, jobs: Sequence[JobSpec]) -> None:
    """Start ``scheduler`` with ``jobs`` synced into its store before anything runs."""
    scheduler.start(paused=True)
    try:
        sync_jobs(scheduler, jobs)
    except Exception:
        scheduler.shutdown(wait=False)
        raise
    scheduler.resume()


def submit_job(engine: Engine, spec: JobSpec) -> None:
    """Add (or replace) one job in the store from any process; the leader runs it.

    The running leader notices it within its ``poll_s``. Meant for one-off work such as a
    retrain request (``trigger="date"``); a date job is removed from the store once it ran.
    """
    scheduler = build_scheduler(engine)
    scheduler.start(paused=True)
    try:
        sync_jobs(scheduler, [spec])
    finally:
        scheduler.shutdown(wait=False)


def run_scheduler(
    database_url: str,
    stop: threading.Event,
    jobs: Sequence[JobSpec],
    *,
    lock_key: int = LOCK_KEY,
    poll_s: float = 5.0,
    health: Health | None = None,
) -> None:
    """Lead (or stand by) until ``stop`` is set: the body of ``radsentry scheduler``.

    While this process holds the lock its scheduler runs ``jobs``; if the lock's session is
    lost, the jobs stop and the process stands by again. On stop, running jobs finish, the
    scheduler shuts down and the lock is released. ``health`` is told of every ``poll_s``
    round, leading or standing by (the process's probes read it).
    """
    health = health or Health(inf)
    engine = make_engine(database_url)
    try:
        while not stop.is_set():
            with leader_lock(
                engine, stop, key=lock_key, poll_s=poll_s, health=health
            ) as leadership:
                if leadership is None:
                    break
                _lead(engine, jobs, leadership, stop, poll_s, health)
    finally:
        engine.dispose()


def _lead(
    engine: Engine,
    jobs: Sequence[JobSpec],
    leadership: Leadership,
    stop: threading.Event,
    poll_s: float,
    health: Health,
) -> None:
    scheduler = build_scheduler(engine)
    start_scheduler(scheduler, jobs)
    log.info("scheduler running", jobs=[spec.id for spec in jobs])
    health.beat(True, state="leading")
    try:
        while not stop.wait(poll_s):
            if not leadership.alive():
                health.beat(False, state="lock lost")
                log.error("scheduler lock lost (database session gone); stopping jobs")
                return
            scheduler.wakeup()  # picks up jobs other processes added to the store
            health.beat(scheduler.running, state="leading")
    finally:
        scheduler.shutdown(wait=True)
        log.info("scheduler stopped")
