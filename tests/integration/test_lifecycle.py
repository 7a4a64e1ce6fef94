"""Starts and stops of the long-running commands, each on a real process (docs/security.md,
"Edge: process lifecycle").

SIGTERM and SIGINT to ``serve``, ``consume`` and ``scheduler`` drain the work in flight, commit
what was processed, stop the bundled broker, and exit 0 within ``STOP_BOUND_S``; no child
process outlives its parent, SIGKILL included. A ``serve`` whose database goes away after the
start answers 503 on /readyz and 200 again once the database is back, without a restart.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from monitor.service.broker import free_port
from monitor.service.embedded_pg import stop_embedded_postgres
from monitor.service.kafka import make_producer
from monitor.service.lifecycle import STOP_BOUND_S
from monitor.service.settings import KafkaSettings
from tests.factories import inference_event
from tests.faults.harness import PrivatePostgres, Process, radsentry_env
from tests.integration.helpers import committed_lag, count_rows, send, wait_for
from tests.servers import fresh_database

pytestmark = pytest.mark.integration

N_EVENTS = 6_000
BATCH = "50"
"""Small batches, so that a signal lands between many commits."""
START_S = 180
"""How long a command may take to start on the shared 2-core CI box (imports alone: ~12 s)."""


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: Linux, like the machines this runs on)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie that its new parent has not reaped yet has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Stopped:
    code: int
    seconds: float
    survivors: set[int]


def _stop(process: Process, sig: signal.Signals) -> Stopped:
    """Send ``sig``, wait (at most twice the bound), and report which of the process's
    descendants are still running the moment it has exited."""
    assert process.popen is not None
    children = _descendants(process.pid)
    started = time.monotonic()
    process.popen.send_signal(sig)
    code = process.popen.wait(2 * STOP_BOUND_S)
    seconds = time.monotonic() - started
    print(f"{process.command[0]} {sig.name}: exit {code} after {seconds:.2f} s")
    return Stopped(code, seconds, {pid for pid in children if _alive(pid)})  # at the exit


def _wait_ready(port: int, process: Process, path: str = "/readyz") -> None:
    def ready() -> bool:
        assert process.alive(), process.text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, START_S, f"{process.command[0]} to be ready")


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    return env | {
        "RADSENTRY_DATA_DIR": str(data_dir),
        "RADSENTRY_KAFKA__SESSION_TIMEOUT_MS": "6000",
    }


def _publish(kafka: KafkaSettings) -> None:
    producer = make_producer(kafka.bootstrap_servers, kafka)
    send(producer, kafka, [inference_event(i, f"site-0{i % 3}") for i in range(N_EVENTS)])
    producer.close()


def _assert_drained(engine: Engine, kafka: KafkaSettings, stored_at_signal: int) -> None:
    """Everything stored is committed and nothing committed is missing: the group's committed
    offsets sit exactly after the stored events (a batch stored but not committed would be
    redelivered, harmless but not a clean stop)."""
    stored = count_rows(engine)["processed_events"]
    assert stored_at_signal < N_EVENTS, "the signal must land mid-stream"
    assert stored >= stored_at_signal
    assert N_EVENTS - committed_lag(kafka.bootstrap_servers, kafka) == stored


# --- serve --------------------------------------------------------------------------------------


def test_serve_on_embedded_defaults_stops_its_broker_on_sigterm(tmp_path: Path) -> None:
    """The issue's case: SIGTERM ended serve with 143 and left the broker under PID 1."""
    port = free_port()
    serve = Process(["serve", "--port", str(port)], _embedded_env(tmp_path), tmp_path / "log")
    serve.start()
    try:
        _wait_ready(port, serve)
        broker_pid = json.loads((tmp_path / "broker.json").read_text())["pid"]
        assert broker_pid in _descendants(serve.pid)
        stopped = _stop(serve, signal.SIGTERM)
    finally:
        if serve.alive():
            serve.kill()
    assert stopped.code == 0, serve.text()[-3000:]
    assert stopped.seconds < STOP_BOUND_S
    assert stopped.survivors == set() and not _alive(broker_pid)
    assert not (tmp_path / "broker.json").exists()
    assert "stopped cleanly" in serve.text()


def test_serve_killed_with_sigkill_takes_its_broker_along(tmp_path: Path) -> None:
    """No handler runs on SIGKILL; the broker ends anyway (parent-death signal)."""
    port = free_port()
    serve = Process(["serve", "--port", str(port)], _embedded_env(tmp_path), tmp_path / "log")
    serve.start()
    try:
        _wait_ready(port, serve)
        broker_pid = json.loads((tmp_path / "broker.json").read_text())["pid"]
    finally:
        serve.kill()
        # The embedded PostgreSQL outlives a SIGKILL (the next start joins it): stop it here,
        # as the next `radsentry` run's --fresh would, so no test leaves a server running.
        stopped = stop_embedded_postgres(tmp_path)
    wait_for(lambda: not _alive(broker_pid), 15, "the orphaned broker to end")
    assert stopped, "serve ran on an embedded server of its own"


def test_serve_drains_and_commits_on_sigint(
    pg_engine: Engine, pg_url: str, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    port = free_port()
    env = radsentry_env(
        pg_url, tmp_path, kafka=kafka_settings, KAFKA__MAX_POLL_RECORDS=BATCH, API__PORT=str(port)
    )
    serve = Process(["serve"], env, tmp_path / "serve.log")
    _publish(kafka_settings)
    serve.start()
    try:
        _wait_ready(port, serve)
        wait_for(lambda: count_rows(pg_engine)["processed_events"] >= 300, 120, "a first share")
        stored_at_signal = count_rows(pg_engine)["processed_events"]
        stopped = _stop(serve, signal.SIGINT)
    finally:
        if serve.alive():
            serve.kill()
    assert stopped.code == 0, serve.text()[-3000:]
    assert stopped.seconds < STOP_BOUND_S
    assert stopped.survivors == set()
    _assert_drained(pg_engine, kafka_settings, stored_at_signal)


# --- consume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_consume_drains_and_commits_on_a_stop_signal(
    sig: signal.Signals,
    pg_engine: Engine,
    pg_url: str,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = radsentry_env(pg_url, tmp_path, kafka=kafka_settings, KAFKA__MAX_POLL_RECORDS=BATCH)
    consume = Process(["consume", "--metrics-port", str(port)], env, tmp_path / "consume.log")
    _publish(kafka_settings)
    consume.start()
    try:
        wait_for(lambda: count_rows(pg_engine)["processed_events"] >= 300, START_S, "a share")
        stored_at_signal = count_rows(pg_engine)["processed_events"]
        stopped = _stop(consume, sig)
    finally:
        if consume.alive():
            consume.kill()
    assert stopped.code == 0, consume.text()[-3000:]
    assert stopped.seconds < STOP_BOUND_S
    assert stopped.survivors == set()
    assert "stopped cleanly" in consume.text()
    _assert_drained(pg_engine, kafka_settings, stored_at_signal)


# --- scheduler ----------------------------------------------------------------------------------


def test_scheduler_stops_on_sigterm_and_releases_its_lock(
    pg_engine: Engine, pg_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = radsentry_env(pg_url, tmp_path)
    scheduler = Process(["scheduler", "--metrics-port", str(port)], env, tmp_path / "log")
    scheduler.start()
    try:
        _wait_ready(port, scheduler)  # leading: the lock is held, the jobs run
        stopped = _stop(scheduler, signal.SIGTERM)
    finally:
        if scheduler.alive():
            scheduler.kill()
    assert stopped.code == 0, scheduler.text()[-3000:]
    assert stopped.seconds < STOP_BOUND_S
    assert stopped.survivors == set()
    assert "scheduler lock released" in scheduler.text()
    locks = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with pg_engine.connect() as connection:
        assert connection.scalar(locks) == 0


# --- a database lost after the start ------------------------------------------------------------


@contextmanager
def _private_postgres() -> Iterator[PrivatePostgres]:
    postgres = PrivatePostgres().open()
    try:
        yield postgres
    finally:
        postgres.close()


def _readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=15)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


@pytest.mark.faults
def test_serve_reports_a_lost_database_not_ready_and_recovers_by_itself(
    broker: str, tmp_path: Path
) -> None:
    port = free_port()
    with (
        _private_postgres() as postgres,
        fresh_database(postgres.admin_url, "lifecycle") as url,
    ):
        env = radsentry_env(url, tmp_path) | {
            "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": json.dumps([broker]),
            "RADSENTRY_KAFKA__SESSION_TIMEOUT_MS": "6000",
        }
        serve = Process(["serve", "--port", str(port)], env, tmp_path / "serve.log")
        serve.start()
        try:
            _wait_ready(port, serve)
            postgres.stop("fast")
            wait_for(lambda: _readyz(port)[0] == 503, 30, "/readyz to say not ready")
            assert _readyz(port) == (
                503,
                {"status": "not ready", "database": False, "broker": True},
            )
            postgres.start()
            wait_for(lambda: _readyz(port)[0] == 200, 60, "/readyz to recover")
            assert serve.alive()
            stopped = _stop(serve, signal.SIGTERM)
        finally:
            if serve.alive():
                serve.kill()
    assert stopped.code == 0, serve.text()[-3000:]
