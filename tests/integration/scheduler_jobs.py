"""Job functions and a scheduler replica for tests/integration/test_scheduler.py.

The job store refers to jobs by text ("module:function"), so they live in an importable module.
``python -m tests.integration.scheduler_jobs URL POLL_S`` runs one scheduler replica with a
one-second tick job until SIGTERM, logging JSON lines to stderr.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType

from sqlalchemy import NullPool, create_engine, text

from monitor.service.logging import configure_logging
from monitor.service.scheduler import JobSpec, run_scheduler
from monitor.service.settings import LoggingSettings

RUNS_TABLE = "scheduler_test_runs"


def record_run(database_url: str, label: str) -> None:
    """Insert one row (label, this process's id, time) per run."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (label TEXT, pid INT, ran_at TEXT)")
            )
            connection.execute(
                text(f"INSERT INTO {RUNS_TABLE} VALUES (:label, :pid, :ran_at)"),
                {"label": label, "pid": os.getpid(), "ran_at": datetime.now(UTC).isoformat()},
            )
    finally:
        engine.dispose()


def tick_job(database_url: str) -> JobSpec:
    """Every second, record a "tick"."""
    return JobSpec(
        id="record-tick",
        func_ref="tests.integration.scheduler_jobs:record_run",
        trigger="interval",
        trigger_args={"seconds": 1},
        args=(database_url, "tick"),
        misfire_grace_time=30,
    )


def main(database_url: str, poll_s: float) -> None:
    configure_logging(LoggingSettings(json_output=True))
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    run_scheduler(database_url, stop, [tick_job(database_url)], poll_s=poll_s)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
