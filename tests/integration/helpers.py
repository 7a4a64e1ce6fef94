"""Helpers for integration tests against the real broker and database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import Engine, func, select

from monitor.events import Event, to_json
from monitor.service.db import table_of
from monitor.service.drift.store import DriftMonitor
from monitor.service.health import Health
from monitor.service.ingest.consumer import Ingestor, IngestStats
from monitor.service.kafka import make_consumer, make_producer
from monitor.service.models import (
    Base,
    DeadLetter,
    InferenceEventRow,
    LabelEventRow,
    ProcessedEvent,
)
from monitor.service.publish import topic_for
from monitor.service.settings import KafkaSettings


def count_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            model.__tablename__: connection.scalar(select(func.count()).select_from(model)) or 0
            for model in (InferenceEventRow, LabelEventRow, ProcessedEvent, DeadLetter)
        }


def table_rows(engine: Engine, model: type[Base], left_out: Collection[str] = ()) -> list[str]:
    """Every row of ``model``'s table but the ``left_out`` columns, as canonical JSON (floats
    written exactly), sorted: two databases that should agree are compared value for value."""
    table = table_of(model)
    unknown = set(left_out) - set(table.c.keys())
    assert not unknown, f"{table.name} has no column {sorted(unknown)}"
    columns = [column for column in table.c if column.name not in left_out]
    with engine.connect() as connection:
        rows = connection.execute(select(*columns)).mappings().all()
    return sorted(
        orjson.dumps(dict(row), option=orjson.OPT_SORT_KEYS, default=_bytes_hex).decode()
        for row in rows
    )


def _bytes_hex(value: object) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def send(producer: KafkaProducer, settings: KafkaSettings, events: Iterable[Event]) -> None:
    for event in events:
        producer.send(topic_for(event, settings), key=event.site_id.encode(), value=to_json(event))
    producer.flush()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def ingest_until(
    engine: Engine,
    settings: KafkaSettings,
    done: Callable[[IngestStats], bool],
    timeout: float = 60.0,
    drift: DriftMonitor | None = None,
    health: Health | None = None,
) -> IngestStats:
    """Run a real Ingestor in a thread until ``done(stats)`` holds, then stop it cleanly."""
    bootstrap = settings.bootstrap_servers
    consumer = make_consumer(bootstrap, settings)
    producer = make_producer(bootstrap, settings)
    ingestor = Ingestor(engine, consumer, producer, settings, drift, health)
    stop = threading.Event()
    thread = threading.Thread(target=ingestor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: done(ingestor.stats), timeout, "ingestion")
    finally:
        stop.set()
        thread.join(30)
        consumer.close(autocommit=False)
        producer.close()
    return ingestor.stats


def read_all(
    bootstrap: list[str], topic: str, expected: int = 0, timeout: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of ``topic``, read without a group up to each partition's high watermark.

    ``expected``: keep reading until at least that many have arrived (records still being
    produced); after ``timeout`` whatever has arrived is returned.
    """
    consumer = _reader(bootstrap)
    try:
        starts = dict.fromkeys(_partitions(consumer, topic), 0)
        records, _ = _read_to_end(consumer, starts, timeout, expected)
        return records
    finally:
        consumer.close()


def committed_lag(bootstrap: list[str], settings: KafkaSettings, timeout: float = 30.0) -> int:
    """Records on the event topics that the group has not committed past: each partition's
    high watermark minus the group's committed offset (only the records past it are read)."""
    group = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=settings.group_id, enable_auto_commit=False
    )
    reader = _reader(bootstrap)
    try:
        committed = {
            tp: group.committed(tp) or 0
            for topic in (settings.inference_topic, settings.labels_topic)
            for tp in _partitions(reader, topic)
        }
        _, at_end = _read_to_end(reader, committed, timeout)
        if not at_end:
            raise AssertionError(f"no high watermark within {timeout:.0f} s: {committed}")
        return sum(reader.highwater(tp) - offset for tp, offset in committed.items())
    finally:
        group.close()
        reader.close()


def _reader(bootstrap: list[str]) -> KafkaConsumer:
    """A consumer without a group; an offset no longer on the log reads from its start."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )


def _read_to_end(
    consumer: KafkaConsumer, starts: dict[TopicPartition, int], timeout: float, expected: int = 0
) -> tuple[list[ConsumerRecord], bool]:
    """Read each partition of ``starts`` from its offset up to its high watermark, and at
    least ``expected`` records; the records, and whether that was done within ``timeout``.

    The end is the high watermark of the fetch responses, not ``end_offsets``: Tansu 0.6
    answers ListOffsets with wrong values (ADR 0001), its fetch responses with the right ones.
    """
    partitions = list(starts)
    consumer.assign(partitions)
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        if len(records) >= expected and _at_end(consumer, partitions):
            return records, True
    return records, False


def _partitions(consumer: KafkaConsumer, topic: str, timeout: float = 30.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while not (partitions := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} has no partitions after {timeout:.0f} s")
        time.sleep(0.1)
    return [TopicPartition(topic, partition) for partition in sorted(partitions)]


def _at_end(consumer: KafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """Whether a fetch response has reported every partition's high watermark and the
    consumer's position has reached it."""
    for tp in partitions:
        highwater = consumer.highwater(tp)
        if highwater is None or consumer.position(tp) < highwater:
            return False
    return True
