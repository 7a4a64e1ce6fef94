"""The standalone scheduler: one leader among replicas, persistent jobs, nightly drift reports."""

from __future__ import annotations

import base64
import importlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from structlog.testing import capture_logs

from monitor.service.db import make_engine
from monitor.service.drift.jobs import write_drift_reports
from monitor.service.drift.store import DriftMonitor
from monitor.service.health import Health
from monitor.service.scheduler import (
    JOBS_TABLE,
    LOCK_KEY,
    JobSpec,
    build_scheduler,
    default_jobs,
    run_scheduler,
    start_scheduler,
    submit_job,
)
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.api.test_drift_api import CONFIG, changed_site, ingest
from tests.integration.helpers import wait_for
from tests.integration.scheduler_jobs import RUNS_TABLE, tick_job

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """The test database without scheduler tables (they are not Alembic's: test_migrations)."""
    engine = make_engine(pg_url)

    def drop() -> None:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {JOBS_TABLE}, {RUNS_TABLE}"))

    drop()
    yield engine
    drop()
    engine.dispose()


class Replica:
    """One ``radsentry scheduler``-like process whose log lines are collected."""

    def __init__(self, database_url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.scheduler_jobs", database_url, "0.3"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def logged(self, message: str) -> bool:
        return any(message in line for line in self.lines)


def runs(engine: Engine) -> list[tuple[str, int]]:
    if not inspect(engine).has_table(RUNS_TABLE):
        return []
    with engine.connect() as connection:
        query = text(f"SELECT label, pid FROM {RUNS_TABLE} ORDER BY ran_at")
        return [(label, pid) for label, pid in connection.execute(query)]


def test_two_replicas_run_a_job_once_and_the_standby_takes_over(
    engine: Engine, pg_url: str
) -> None:
    first = Replica(pg_url)
    second: Replica | None = None
    try:
        wait_for(lambda: first.logged("scheduler lock acquired; leading"), 20, "a leader")
        second = Replica(pg_url)
        standby = second
        wait_for(
            lambda: standby.logged("another scheduler holds the lock; standing by"), 20, "a standby"
        )

        run_at = datetime.now(UTC) + timedelta(seconds=1)
        once = JobSpec(
            id="record-once",
            func_ref="tests.integration.scheduler_jobs:record_run",
            trigger="date",
            trigger_args={"run_date": run_at.isoformat()},
            args=(pg_url, "once"),
            misfire_grace_time=30,
        )
        submit_job(engine, once)
        wait_for(lambda: ("once", first.process.pid) in runs(engine), 10, "the one-off job")
        wait_for(lambda: len(runs(engine)) >= 3, 10, "ticks")
        assert {pid for _, pid in runs(engine)} == {first.process.pid}
        assert [label for label, _ in runs(engine)].count("once") == 1

        first.process.kill()  # a crash: the server ends the session and its lock
        first.process.wait(10)
        wait_for(lambda: standby.logged("scheduler lock acquired; leading"), 10, "takeover")
        wait_for(
            lambda: ("tick", standby.process.pid) in runs(engine), 10, "a tick by the new leader"
        )
        assert [label for label, _ in runs(engine)].count("once") == 1  # done jobs stay done

        standby.process.terminate()
        assert standby.process.wait(20) == 0
        assert standby.logged("scheduler lock released")
        with engine.connect() as connection:
            key = {"key": LOCK_KEY}
            assert connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), key)
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        for replica in (first, second):
            if replica is not None and replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait(10)


class RecordedHealth(Health):
    """Health that keeps every beat, to see transitions too brief to poll for."""

    def __init__(self) -> None:
        super().__init__(stale_after_s=60)
        self.beats: list[tuple[bool, str]] = []

    def beat(self, ok: bool = True, **detail: str) -> None:
        self.beats.append((ok, detail.get("state", "")))
        super().beat(ok, **detail)


def test_a_leader_whose_session_dies_stops_its_jobs_and_leads_again(
    engine: Engine, pg_url: str
) -> None:
    stop = threading.Event()
    health = RecordedHealth()
    thread = threading.Thread(
        target=run_scheduler,
        args=(pg_url, stop, [tick_job(pg_url)]),
        kwargs={"poll_s": 0.2, "health": health},
    )
    lock_holders = text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with capture_logs() as logs:
        thread.start()
        try:
            wait_for(lambda: len(runs(engine)) >= 1, 10, "a tick")
            with engine.connect() as connection:
                (holder,) = connection.scalars(lock_holders).all()
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holder})
            wait_for(lambda: any("lock lost" in e["event"] for e in logs), 5, "the step-down")
            count = len(runs(engine))
            wait_for(lambda: len(runs(engine)) > count, 10, "a tick after leading again")
            report = health.report()
            assert report["ready"] and report["state"] == "leading"
        finally:
            stop.set()
            thread.join(10)
    events = [entry["event"] for entry in logs]
    assert events.count("scheduler lock acquired; leading") == 2
    assert not thread.is_alive()
    lost = health.beats.index((False, "lock lost"))  # not ready while the lock was lost...
    assert (True, "leading") in health.beats[:lost]
    assert (True, "leading") in health.beats[lost:]  # ...and ready again once it led again


def test_a_replica_standing_by_is_ready_and_leads_when_the_lock_frees(
    engine: Engine, pg_url: str
) -> None:
    stop = threading.Event()
    health = Health(stale_after_s=60)
    thread = threading.Thread(
        target=run_scheduler,
        args=(pg_url, stop, [tick_job(pg_url)]),
        kwargs={"poll_s": 0.2, "health": health},
    )
    key = {"key": LOCK_KEY}
    with engine.connect() as holder:  # another replica leads
        assert holder.scalar(text("SELECT pg_try_advisory_lock(:key)"), key)
        thread.start()
        try:
            wait_for(lambda: health.report()["state"] == "standing by", 10, "standing by")
            assert health.report()["ready"]
            assert runs(engine) == []
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            holder.commit()
            wait_for(lambda: health.report()["state"] == "leading", 10, "leading")
            assert health.report()["ready"]
            wait_for(lambda: len(runs(engine)) >= 1, 10, "a tick by the new leader")
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()


def stored_jobs(engine: Engine, jobs: list[JobSpec]) -> dict[str, float]:
    """Start a scheduler with ``jobs``, stop it, and return the store's id -> next run time."""
    scheduler = build_scheduler(engine)
    start_scheduler(scheduler, jobs)
    scheduler.shutdown(wait=True)
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT id, next_run_time FROM {JOBS_TABLE}")).all()
    return {job_id: next_run for job_id, next_run in rows}


def test_jobs_persist_under_their_ids_and_a_restart_keeps_their_schedule(
    engine: Engine, tmp_path: Path
) -> None:
    first = stored_jobs(engine, default_jobs(tmp_path))
    assert set(first) == {
        "performance-refresh",
        "retrain-triggers",
        "retrain-requests",
        "pccp-gate",
        "nightly-drift-reports",
        "audit-checkpoint",
        "audit-verify",
        "performance-verify",
    }
    assert datetime.fromtimestamp(first["nightly-drift-reports"], UTC).hour == 2
    assert datetime.fromtimestamp(first["performance-verify"], UTC).hour == 2  # checkpoint + 1

    assert stored_jobs(engine, default_jobs(tmp_path)) == first  # no duplicates, same times

    changed = stored_jobs(engine, default_jobs(tmp_path, refresh_s=60))
    assert set(changed) == set(first)
    assert changed["nightly-drift-reports"] == first["nightly-drift-reports"]
    assert changed["performance-refresh"] < first["performance-refresh"]  # the new spec won


def test_nightly_reports_write_the_site_drift_page_of_each_stream_with_a_reference(
    pg_engine: Engine, tmp_path: Path
) -> None:
    monitor = DriftMonitor(CONFIG)
    ingest(pg_engine, monitor, changed_site(300))
    young = FeatureStreamConfig(site_id="site-03", n_events=20, seed=3)
    ingest(pg_engine, monitor, list(feature_stream(young)), start=10_000)

    written = write_drift_reports(pg_engine, CONFIG, tmp_path, date(2026, 11, 29))

    # The site drift page (what `radsentry report` writes), not the Evidently page (issue 22).
    folder = tmp_path / "site-02" / "2026-11-29"
    assert written == [folder / "cxr-lesion-1.0.0.html"]
    page = written[0].read_text()
    assert "<h1>Drift at site-02</h1>" in page and "Glossary" in page
    assert "/sites/site-02/report?" in page  # the appendix: the API's, none written here
    assert not (tmp_path / "site-03").exists()  # still collecting its reference

    # Configured to, it writes the Evidently appendix beside the page, which links to it.
    again = write_drift_reports(
        pg_engine, CONFIG, tmp_path, date(2026, 11, 30), evidently_appendix=True
    )
    folder = tmp_path / "site-02" / "2026-11-30"
    assert again == [folder / "cxr-lesion-1.0.0.html", folder / "cxr-lesion-1.0.0.evidently.html"]
    assert 'href="cxr-lesion-1.0.0.evidently.html"' in again[0].read_text()
    assert "Drift report: site-02, cxr-lesion 1.0.0" in again[1].read_text()


def test_the_standing_jobs_run_on_the_configured_database(
    pg_url: str, pg_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADSENTRY_DATABASE__URL", pg_url)  # pg_engine: migrated and empty
    jobs = {spec.id: spec for spec in default_jobs(tmp_path / "reports")}
    with capture_logs() as logs:
        for spec in jobs.values():
            module, function = spec.func_ref.split(":")
            getattr(importlib.import_module(module), function)(*spec.args)
    events = {entry["event"]: entry for entry in logs}
    assert events["performance refreshed"]["snapshots"] == 0
    assert events["nightly drift reports written"]["reports"] == 0
    assert events["change log verified"]["entries"] == 0


STORE_BEFORE_DOMAINS = Path(__file__).parent / "data" / "apscheduler_jobs_before_domains.json"
"""The job store that the code before the service layer's move into domain folders wrote: its
standing jobs (reports under /var/lib/radsentry/reports) and a one-off ``pccp_gate_job`` due in
2030, as APScheduler pickled them."""


def test_a_job_store_written_before_the_domain_move_keeps_every_job_and_its_schedule(
    engine: Engine,
) -> None:
    written = json.loads(STORE_BEFORE_DOMAINS.read_text())["jobs"]
    creator = build_scheduler(engine)
    creator.start(paused=True)  # creates the store's table
    creator.shutdown(wait=False)
    with engine.begin() as connection:
        for job in written:
            connection.execute(
                text(f"INSERT INTO {JOBS_TABLE} VALUES (:id, :next_run_time, :job_state)"),
                job | {"job_state": base64.b64decode(job["job_state"])},
            )

    scheduler = build_scheduler(engine)
    with capture_logs() as logs:
        start_scheduler(scheduler, default_jobs("/var/lib/radsentry/reports"))
    try:
        scheduler.pause()
        events = {e["job_id"]: e["event"] for e in logs if e.get("job_id")}
        added_since = {"performance-verify"}  # a standing job the old store did not have
        assert {j: e for j, e in events.items() if j not in added_since} == dict.fromkeys(
            (job["id"] for job in written if job["id"] in events), "job kept"
        )  # none replaced
        assert len(events) == 8 and events["performance-verify"] != "job kept"
        stored = {job.id: job for job in scheduler.get_jobs()}
        assert set(stored) == {job["id"] for job in written} | added_since
        for job in written:
            assert stored[job["id"]].next_run_time.timestamp() == job["next_run_time"]
            assert callable(stored[job["id"]].func)
        assert stored["gate-once"].func_ref == "monitor.service.jobs:pccp_gate_job"
    finally:
        scheduler.shutdown(wait=False)
