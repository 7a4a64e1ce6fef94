"""Scale-out with processes: a consumer group of `radsentry consume` processes gives exactly what
one consumer gives, with a member killed and another added while events flow.

100 sites' studies and labels (feature-level streams, five sites changing scanner) go, keyed by
site, to 12-partition topics. Three `radsentry consume` processes share one consumer group and
one database. As soon as one of them has committed batches of its own it is killed with
SIGKILL: its open transaction rolls back, its partitions wait for its session to time out and
move to the other two, which reload the drift states it saved. More events come; a fourth
process joins (another rebalance: partitions move between live members mid-stream); the rest
follow. Beside it, one `radsentry consume` process in a group of its own reads the same topics
into a second database. Once both have stored every event, the drift checks, alerts, streams and
references and, after a performance refresh at the same fixed time on both, the performance
snapshots and alarms must be equal value for value (floats exactly); only row ids, wall-clock
times and what depends on which process stored which batch are left out (``LEFT_OUT``).

The in-process version (two ``DriftMonitor`` objects taking turns on one database) is in
test_drift_consumer.py.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer
from sqlalchemy import Engine, func, select

from benchmarks.bench_scale_out import site_id, workload
from monitor.events import Event
from monitor.service.broker import free_port
from monitor.service.db import make_engine
from monitor.service.kafka import all_topics, ensure_topics, make_producer
from monitor.service.models import (
    AlertRow,
    Base,
    DriftCheckRow,
    DriftStreamRow,
    PerformanceAlarmRow,
    PerformanceSnapshotRow,
    ProcessedEvent,
    ReferenceChangeRow,
)
from monitor.service.performance.labels import expire_unmatched
from monitor.service.performance.store import refresh
from monitor.service.settings import KafkaSettings, PerformanceSettings
from tests.conftest import kafka_topics
from tests.faults.harness import Process, radsentry_env, tally, unpublished_alerts
from tests.integration.helpers import committed_lag, read_all, send, table_rows, wait_for
from tests.servers import migrated_database, pg_admin_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITES = 100
PARTITIONS = 12
REFERENCE = 50
WINDOW = 20
STUDIES_PER_SITE = REFERENCE + 3 * WINDOW
CHANGE_AT = REFERENCE + WINDOW // 2
"""Sites 1, 21, 41, 61 and 81 change scanner half-way through their first window."""
CHANGED_SITES = {site_id(number) for number in range(1, SITES + 1, 20)}
DRIFT = {
    # Small references and windows, so that 110 studies per site give three scored windows,
    # and a cheap online detector: this test is about who processes the events, not statistics.
    "DRIFT__REFERENCE_SIZE": str(REFERENCE),
    "DRIFT__WINDOW__SIZE": str(WINDOW),
    "DRIFT__WINDOW__MIN_SIZE": "10",
    "DRIFT__LEARNED__CHUNK_SIZE": "10",  # five reference chunks: thresholds are learned
    "DRIFT__LEARNED__MIN_CHUNKS": "5",
    "DRIFT__DETECTORS__ONLINE__DETECTOR__ERT": "500",
    "DRIFT__DETECTORS__ONLINE__DETECTOR__WINDOW_SIZE": "10",
    "DRIFT__DETECTORS__ONLINE__DETECTOR__N_BOOTSTRAPS": "100",
}
MAX_POLL_RECORDS = 500
KILL_AFTER, ADD_AFTER = 0.4, 0.65
"""Shares of the events published before the kill, and before the fourth process starts."""
SLICE = 300
"""Events sent every 0.25 s until the fourth process has taken partitions."""
NOW = datetime(2026, 1, 5, tzinfo=UTC)
"""When both performance refreshes run: after every study and label (2026-01-01 to 01-02)."""
PERFORMANCE = PerformanceSettings(rolling_window=30, estimate_reference=50, min_new_labels=20)

LEFT_OUT: dict[type[Base], set[str]] = {
    DriftCheckRow: {"id", "checked_at"},
    AlertRow: {"created_at", "published_at"},
    # Which process saved a stream last: its row version, the last source offset, and the state
    # bytes (archives stamped with the time they were written; every check shows the states).
    DriftStreamRow: {"state", "reference_state", "state_version", "last_source", "updated_at"},
    ReferenceChangeRow: {"id", "recorded_at"},
    PerformanceSnapshotRow: {"id"},
    PerformanceAlarmRow: {"updated_at"},
}
"""The tables compared, and the columns left out of each."""


@dataclass
class Group:
    """The `radsentry consume` processes of one consumer group and database, each with its
    metrics port."""

    env: dict[str, str]
    workdir: Path
    members: list[tuple[Process, int]] = field(default_factory=list)

    def add(self) -> Process:
        port = free_port()
        log = self.workdir / f"consume-{len(self.members) + 1}.log"
        process = Process(["consume", "--metrics-port", str(port)], self.env, log).start()
        self.members.append((process, port))
        return process

    def stored_by(self, index: int) -> float:
        """Events the ``index``-th process has stored and committed, from its metrics."""
        return events_consumed(self.members[index][1])

    def stop(self) -> list[str]:
        """SIGTERM every live member (it stores and commits its batch, exits 0); the last line
        each printed."""
        lines = []
        for process, _ in self.members:
            if process.alive():
                assert process.stop() == 0, process.text()[-3000:]
                lines.append(process.text().strip().splitlines()[-1])
        return lines

    def kill_all(self) -> None:
        for process, _ in self.members:
            if process.alive():
                process.kill()


def events_consumed(port: int) -> float:
    """``radsentry_events_consumed_total`` of the process on ``port`` (0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return 0.0
    pattern = r"^radsentry_events_consumed_total\{[^}]*\} (\S+)$"
    return sum(float(match.group(1)) for match in re.finditer(pattern, body, re.M))


def stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(ProcessedEvent)) or 0)


@pytest.fixture
def databases() -> Iterator[tuple[Engine, Engine]]:
    """Two migrated databases: the consumer group's and the single consumer's."""
    with (
        migrated_database(pg_admin_url(), "radsentry_scale") as group_url,
        migrated_database(pg_admin_url(), "radsentry_single") as single_url,
    ):
        engines = make_engine(group_url), make_engine(single_url)
        try:
            yield engines
        finally:
            for engine in engines:
                engine.dispose()


def group_of(engine: Engine, kafka: KafkaSettings, workdir: Path) -> Group:
    workdir.mkdir()
    env = radsentry_env(engine.url.render_as_string(False), workdir, kafka=kafka, **DRIFT)
    return Group(env, workdir)


def test_three_consumers_one_killed_one_added_store_what_a_single_consumer_stores(
    broker: str, databases: tuple[Engine, Engine], tmp_path: Path
) -> None:
    group_db, single_db = databases
    kafka = kafka_topics(broker, "scale", PARTITIONS, max_poll_records=MAX_POLL_RECORDS)
    # The single consumer reads the same topics in a group of its own; its alerts go to a topic
    # of its own.
    alone = kafka.model_copy(
        update={"group_id": f"{kafka.group_id}-single", "alerts_topic": f"{kafka.group_id}.single"}
    )
    ensure_topics([broker], all_topics(alone), partitions=PARTITIONS)
    group = group_of(group_db, kafka, tmp_path / "group")
    single = group_of(single_db, alone, tmp_path / "single")
    producer = make_producer([broker], kafka)
    try:
        single.add()
        for _ in range(3):
            group.add()
        # The processes take seconds to start: the events are made meanwhile.
        events = workload(SITES, STUDIES_PER_SITE, CHANGE_AT)
        kill_and_add(group, group_db, producer, kafka, events)
        for engine in (group_db, single_db):
            wait_for(lambda e=engine: settled(e, len(events)), 120, "every event stored")
        closing = group.stop()
        single.stop()
    finally:
        producer.close()
        group.kill_all()
        single.kill_all()

    assert len(closing) == 3, closing  # two of the first three and the fourth; one was killed
    assert all(line.startswith("stopped cleanly") for line in closing), closing
    assert committed_lag([broker], kafka) == 0
    assert_the_workload_did_its_job(group_db)
    assert tally(group_db) == tally(single_db)
    published = read_all([broker], kafka.alerts_topic)
    assert {orjson.loads(r.value)["alert_id"] for r in published} == alert_ids(group_db)

    with ThreadPoolExecutor(2) as pool:  # mostly queries: the two overlap
        list(pool.map(refresh_performance, (group_db, single_db)))
    for model, left_out in LEFT_OUT.items():
        ours, theirs = table_rows(group_db, model, left_out), table_rows(single_db, model, left_out)
        assert ours, f"{model.__tablename__} is empty: comparing it would prove nothing"
        assert ours == theirs, f"{model.__tablename__} differs from the single consumer's"


def kill_and_add(
    group: Group,
    engine: Engine,
    producer: KafkaProducer,
    kafka: KafkaSettings,
    events: list[Event],
) -> None:
    """Publish the first share, SIGKILL the first member to commit batches of its own, publish
    more, start a fourth member, and publish the rest (slowly until the fourth has stored)."""
    kill_at, add_at = int(len(events) * KILL_AFTER), int(len(events) * ADD_AFTER)
    send(producer, kafka, events[:kill_at])
    working: list[int] = []

    def one_has_stored() -> bool:
        working[:] = [index for index in range(3) if group.stored_by(index) > 0]
        return bool(working)

    wait_for(one_has_stored, 90, "a consumer committing batches")
    group.members[working[0]][0].kill()
    assert 0 < stored(engine) < len(events), "the kill must land mid-stream"

    send(producer, kafka, events[kill_at:add_at])
    fourth = group.add()
    wait_for(lambda: "ingestion started" in fourth.text(), 90, "the fourth consumer up")
    rest = events[add_at:]
    while rest:
        if group.stored_by(3) > 0:
            portion, rest = rest, []
        else:
            portion, rest = rest[:SLICE], rest[SLICE:]
            time.sleep(0.25)
        send(producer, kafka, portion)
    wait_for(lambda: group.stored_by(3) > 0, 60, "the fourth consumer storing batches")


def settled(engine: Engine, total: int) -> bool:
    """Every event stored and every alert published."""
    return stored(engine) == total and unpublished_alerts(engine) == 0


def refresh_performance(engine: Engine) -> None:
    """What the scheduler's performance job does (label expiry, every snapshot), at ``NOW``."""
    expire_unmatched(engine, timedelta(days=PERFORMANCE.label_horizon_days), NOW)
    refresh(engine, PERFORMANCE, NOW)


def alert_ids(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {str(alert_id) for alert_id in connection.scalars(select(AlertRow.alert_id))}


def assert_the_workload_did_its_job(engine: Engine) -> None:
    """Drift alerts at the changed sites, every stream complete."""
    with engine.connect() as connection:
        alerted = set(connection.scalars(select(AlertRow.site_id).distinct()))
        seen = connection.execute(select(DriftStreamRow.site_id, DriftStreamRow.events_seen)).all()
    assert alerted >= CHANGED_SITES, f"changed sites without an alert: {CHANGED_SITES - alerted}"
    assert dict(seen) == {site_id(n): STUDIES_PER_SITE for n in range(1, SITES + 1)}
