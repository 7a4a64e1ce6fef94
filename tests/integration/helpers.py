"""Helpers for integration tests against the real broker and database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import Engine, func, select

from monitor.events import Event, to_json
from monitor.service.drift_store import DriftMonitor
from monitor.service.ingest import Ingestor, IngestStats
from monitor.service.kafka import make_consumer, make_producer
from monitor.service.models import DeadLetter, InferenceEventRow, LabelEventRow, ProcessedEvent
from monitor.service.publish import topic_for
from monitor.service.settings import KafkaSettings


def count_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            model.__tablename__: connection.scalar(select(func.count()).select_from(model)) or 0
            for model in (InferenceEventRow, LabelEventRow, ProcessedEvent, DeadLetter)
        }


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
) -> IngestStats:
    """Run a real Ingestor in a thread until ``done(stats)`` holds, then stop it cleanly."""
    bootstrap = settings.bootstrap_servers
    consumer = make_consumer(bootstrap, settings)
    producer = make_producer(bootstrap, settings)
    ingestor = Ingestor(engine, consumer, producer, settings, drift)
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
    bootstrap: list[str], topic: str, expected: int, timeout: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` (reads without a group until ``expected`` have arrived)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1_000,
    )
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def committed_lag(bootstrap: list[str], settings: KafkaSettings) -> int:
    """Records on the event topics that the group has not committed past.

    End offsets are found by reading the topics: Tansu 0.6 answers ListOffsets(latest) with
    wrong values, so ``KafkaConsumer.end_offsets`` cannot be trusted against it.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=settings.group_id, enable_auto_commit=False
    )
    try:
        lag = 0
        for topic in (settings.inference_topic, settings.labels_topic):
            ends: dict[int, int] = {}
            for record in read_all(bootstrap, topic, expected=10**9, timeout=3.0):
                ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
            for partition, end in ends.items():
                lag += end - (consumer.committed(TopicPartition(topic, partition)) or 0)
        return lag
    finally:
        consumer.close()
