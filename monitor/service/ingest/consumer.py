"""The ingestion loop: Kafka records -> validated events -> database, exactly once.

At-least-once delivery plus an idempotent store gives exactly-once effects:

1. poll a batch; validate each record (``monitor.events.parse_event``);
2. send refused records to ``<topic>.dlq`` and wait for the broker's acknowledgement;
3. store accepted events and dead-letter ledger rows in one database transaction, keyed by
   ``event_id`` and by source coordinates, so a redelivered batch changes nothing;
4. only then commit the Kafka offsets.

A crash anywhere before step 4 redelivers the batch, and step 3 absorbs the repeat. A failure in
steps 2-3 rewinds the consumer to the batch start and retries with backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from math import inf

import orjson
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy import Connection, Engine

from monitor.events import (
    INFERENCE_SCHEMA,
    LABEL_SCHEMA,
    InferenceEvent,
    InvalidEvent,
    parse_event,
)
from monitor.service import metrics
from monitor.service.drift.alerts import publish_pending
from monitor.service.drift.directions import RegistryDirections
from monitor.service.drift.store import DriftBatch, DriftMonitor, limit_torch_threads
from monitor.service.health import Health
from monitor.service.ingest.store import BatchOutcome, latest_inference_times, store_batch
from monitor.service.kafka import Delivered, Rejected, make_consumer, make_producer
from monitor.service.registry import registry_for
from monitor.service.settings import DEFAULT_SUBGROUP_FIELDS, KafkaSettings, Settings

log = structlog.get_logger(__name__)

Records = Mapping[TopicPartition, Sequence[ConsumerRecord]]


@dataclass(frozen=True, slots=True)
class _Refused:
    record: ConsumerRecord
    error: InvalidEvent

    def ledger_row(self) -> Rejected:
        raw: bytes = self.record.value or b""
        return Rejected(
            topic=self.record.topic,
            partition=self.record.partition,
            offset=self.record.offset,
            code=self.error.code.value,
            reason=self.error.reason,
            payload_sha256=hashlib.sha256(raw).hexdigest(),
            payload_bytes=len(raw),
        )


SITE_SEED_DAYS = 7
"""At start, sites whose newest inference event is at most this old get their
``radsentry_site_last_event_timestamp_seconds`` from the database, so a site that fell silent
before a restart still shows (and alerts) as silent; older ones count as retired."""

_SAFE_KEY = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

PRODUCER_CLOSE_S = 5.0
"""At a stop, seconds the producer may take to deliver what it holds (alerts and dead letters
are stored first, so whatever it cannot deliver is sent again by the next process)."""


@dataclass
class IngestStats:
    """Running totals of one ingestor, for logs, tests and benchmarks."""

    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    failures: int = 0
    alerts_published: int = 0


class Ingestor:
    """Consumes both event topics into the database; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        settings: KafkaSettings,
        drift: DriftMonitor | None = None,
        health: Health | None = None,
        subgroup_fields: Sequence[str] = DEFAULT_SUBGROUP_FIELDS,
    ) -> None:
        """``drift``: run the drift engine in each batch's transaction (None: store only);
        ``health``: told of each round of the loop (the process's probes read it);
        ``subgroup_fields``: the performance settings' (labelled cases are counted per value)."""
        self.engine = engine
        self.subgroup_fields = tuple(subgroup_fields)
        self.consumer = consumer
        self.producer = producer
        self.settings = settings
        self.drift = drift
        self.health = health or Health(inf)
        self.stats = IngestStats()
        self._site_latest: dict[str, float] = {}
        self._alerts_pending = False
        # Alerts also come from elsewhere (performance alerts from the scheduler's jobs, ones a
        # crashed process stored but did not publish): the outbox is checked on this clock too.
        self._next_outbox_check = time.monotonic()
        self._expected = {
            settings.inference_topic: INFERENCE_SCHEMA.split("/")[0],
            settings.labels_topic: LABEL_SCHEMA.split("/")[0],
        }

    def run(self, stop: threading.Event, max_backoff_s: float = 30.0) -> IngestStats:
        """Poll and process until ``stop`` is set; the batch in hand is finished first."""
        backoff = 0.5
        failing = False  # since the last batch failed, until one is stored
        log.info("ingestion started", topics=sorted(self._expected))
        self._seed_site_times()
        while not stop.is_set():
            records = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
            self._observe_lag()
            if not records:
                self._publish_alerts()
                self._beat(not failing)
                continue
            try:
                self.process(records)
                backoff = 0.5
                failing = False
                self._beat(True)
            except Exception:
                # Boundary: whatever failed (broker, database), nothing was committed. Rewind so
                # the same records come again, and back off.
                self.stats.failures += 1
                metrics.INGEST_FAILURES.inc()
                if self.drift is not None:
                    self.drift.forget()  # its cache may be ahead of the rolled-back database
                log.exception("batch failed; rewinding and retrying", backoff_s=backoff)
                self._rewind(records)
                failing = True
                self._beat(False)
                stop.wait(backoff)
                backoff = min(backoff * 2, max_backoff_s)
        log.info("ingestion stopped", **self._summary())
        return self.stats

    def _beat(self, ok: bool) -> None:
        """A round of the loop for the probes: ``ok`` while batches are stored."""
        self.health.beat(ok, state="consuming" if ok else "retrying")

    def process(self, records: Records) -> BatchOutcome:
        """Validate, dead-letter, store and commit one polled batch."""
        started = time.monotonic()
        delivered, refused = self._validate(records)
        if refused:
            self._dead_letter(refused)
        rejected = [item.ledger_row() for item in refused]
        drift_batch = DriftBatch()

        def detect(connection: Connection, stored: list[Delivered]) -> None:
            nonlocal drift_batch
            assert self.drift is not None
            drift_batch = self.drift.process(connection, stored)

        outcome = store_batch(
            self.engine,
            delivered,
            rejected,
            detect if self.drift else None,
            subgroup_fields=self.subgroup_fields,
        )
        self._commit(records)
        committed = time.time()
        self._observe(outcome, delivered, rejected, records, committed)
        observe_drift(drift_batch)
        self._alerts_pending |= bool(drift_batch.alerts)
        self._publish_alerts()
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        return outcome

    def _publish_alerts(self) -> None:
        """Publish stored, unpublished alerts (when this batch raised some, or the outbox is due
        for a check); on failure they wait for the next try."""
        if self.drift is None:
            return
        now = time.monotonic()
        if not self._alerts_pending and now < self._next_outbox_check:
            return
        self._next_outbox_check = now + self.settings.outbox_check_s
        try:
            published = publish_pending(
                self.engine,
                self.producer,
                self.settings.alerts_topic,
                self.settings.request_timeout_ms / 1000,
                self.drift.config.severity.notify_at_least,
            )
        except Exception:
            # Boundary: the alerts are stored; the broker will get them on a later try.
            log.exception("publishing alerts failed; will retry")
            return
        self._alerts_pending = False
        if published:
            self.stats.alerts_published += published

    def _validate(self, records: Records) -> tuple[list[Delivered], list[_Refused]]:
        delivered: list[Delivered] = []
        refused: list[_Refused] = []
        for tp, batch in records.items():
            expected = self._expected.get(tp.topic)
            for record in batch:
                raw: bytes = record.value or b""
                try:
                    event = parse_event(raw, expected)
                except InvalidEvent as exc:
                    refused.append(_Refused(record, exc))
                    continue
                delivered.append(Delivered(event, record.topic, record.partition, record.offset))
        return delivered, refused

    def _dead_letter(self, refused: list[_Refused]) -> None:
        futures = []
        for item in refused:
            record, error = item.record, item.error
            futures.append(
                self.producer.send(
                    self.settings.dlq_topic(record.topic),
                    key=record.key if record.key and _SAFE_KEY.match(record.key) else None,
                    value=_dead_letter_value(error),
                    headers=_dead_letter_headers(item.ledger_row()),
                )
            )
            log.warning(
                "record dead-lettered",
                source=f"{record.topic}[{record.partition}]@{record.offset}",
                code=error.code.value,
                reason=error.reason,
            )
        self.producer.flush()
        for future in futures:
            future.get(timeout=self.settings.request_timeout_ms / 1000)

    def _commit(self, records: Records) -> None:
        offsets = {
            tp: OffsetAndMetadata(batch[-1].offset + 1, "", -1)
            for tp, batch in records.items()
            if batch
        }
        try:
            self.consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced: the new owner redelivers this batch and the inbox skips it.
            log.warning("offset commit refused after a rebalance; batch will be redelivered")

    def _rewind(self, records: Records) -> None:
        for tp, batch in records.items():
            if batch and tp in self.consumer.assignment():
                self.consumer.seek(tp, batch[0].offset)

    def _observe(
        self,
        outcome: BatchOutcome,
        delivered: list[Delivered],
        rejected: list[Rejected],
        records: Records,
        committed: float,
    ) -> None:
        self.stats.batches += 1
        self.stats.stored += len(outcome.stored)
        self.stats.duplicates += outcome.duplicates
        self.stats.dead_lettered += outcome.dead_lettered
        stored = Counter((item.topic, item.event.site_id) for item in outcome.stored)
        for (topic, site_id), count in stored.items():
            metrics.EVENTS_CONSUMED.labels(topic, site_id).inc(count)
        duplicates = Counter(item.topic for item in delivered)
        duplicates.subtract(Counter(item.topic for item in outcome.stored))
        for topic, count in duplicates.items():
            if count:
                metrics.EVENTS_DUPLICATE.labels(topic).inc(count)
        for (topic, code), count in Counter((r.topic, r.code) for r in rejected).items():
            metrics.EVENTS_DEAD_LETTERED.labels(topic, code).inc(count)
        self._observe_site_times(outcome.stored)
        for batch in records.values():
            for record in batch:
                if record.timestamp and record.timestamp > 0:
                    metrics.PROCESSING_SECONDS.observe(max(0.0, committed - record.timestamp / 1e3))

    def _observe_site_times(self, stored: list[Delivered]) -> None:
        newest: dict[str, float] = {}
        for item in stored:
            if isinstance(item.event, InferenceEvent):
                at = item.event.occurred_at.timestamp()
                newest[item.event.site_id] = max(at, newest.get(item.event.site_id, at))
        for site_id, at in newest.items():
            self._advance_site_time(site_id, at)

    def _seed_site_times(self) -> None:
        """The newest stored inference event per recently active site (see SITE_SEED_DAYS)."""
        since = datetime.now(UTC) - timedelta(days=SITE_SEED_DAYS)
        try:
            latest = latest_inference_times(self.engine, since)
        except Exception:
            # Boundary: only a metric is missing until the site's next event; ingestion goes on.
            log.exception("cannot read the newest event per site")
            return
        for site_id, at in latest.items():
            self._advance_site_time(site_id, at.timestamp())

    def _advance_site_time(self, site_id: str, at: float) -> None:
        # Never backwards: a late or replayed event is not news from the site.
        if at > self._site_latest.get(site_id, float("-inf")):
            self._site_latest[site_id] = at
            metrics.SITE_LAST_EVENT.labels(site_id).set(at)

    def _observe_lag(self) -> None:
        """Consumer lag per topic from what the client already knows: each partition's high
        watermark (sent with every fetch response) minus its position. No broker round trip;
        a partition not fetched from yet adds nothing. (``end_offsets`` would cost a
        ListOffsets request, and the bundled broker answers that one wrongly.)"""
        lag = dict.fromkeys(self._expected, 0)
        try:
            for tp in self.consumer.assignment():
                highwater = self.consumer.highwater(tp)
                if highwater is None or tp.topic not in lag:
                    continue
                position = self.consumer.position(tp, timeout_ms=0)
                if position is not None:
                    lag[tp.topic] += max(0, highwater - position)
        except KafkaError as exc:
            # A rebalance took a partition away meanwhile, or a position is being reset: only
            # the gauge waits for the next poll.
            log.debug("consumer lag not measured", error=repr(exc))
            return
        for topic, behind in lag.items():
            metrics.CONSUMER_LAG.labels(topic).set(behind)

    def _summary(self) -> dict[str, int]:
        s = self.stats
        return {
            "batches": s.batches,
            "stored": s.stored,
            "duplicates": s.duplicates,
            "dead_lettered": s.dead_lettered,
            "failures": s.failures,
        }


def observe_drift(batch: DriftBatch) -> None:
    """Prometheus: the latest statistic per (site, model, detector), checks and alerts counted."""
    for check in batch.checks:
        labels = (check.key.site_id, check.key.model_name, check.detector)
        result = check.result
        if result is None:
            metrics.DRIFT_CHECKS.labels(*labels, "skipped").inc()
            continue
        metrics.DRIFT_CHECKS.labels(*labels, "drift" if result.is_drift else "quiet").inc()
        metrics.DRIFT_STATISTIC.labels(*labels).set(result.statistic)
        metrics.DRIFT_EFFECT_SIZE.labels(*labels).set(result.effect_size)
        metrics.DRIFT_DETECTED.labels(*labels).set(1.0 if result.is_drift else 0.0)
        if result.p_value is not None:
            metrics.DRIFT_P_VALUE.labels(*labels).set(result.p_value)
        if result.threshold is not None:
            metrics.DRIFT_THRESHOLD.labels(*labels).set(result.threshold)
        if result.effect_threshold is not None:
            metrics.DRIFT_EFFECT_THRESHOLD.labels(*labels).set(result.effect_threshold)
        else:  # nothing learned now (learning off, a reference too short): no stale line
            with contextlib.suppress(KeyError):
                metrics.DRIFT_EFFECT_THRESHOLD.remove(*labels)
    for (key, detector), share in batch.time_in_alarm.items():
        metrics.DRIFT_TIME_IN_ALARM.labels(key.site_id, key.model_name, detector).set(share)
    for alert in batch.alerts:
        metrics.ALERTS_OPENED.labels(alert.key.site_id, alert.key.model_name, alert.detector).inc()


def _dead_letter_headers(item: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("radsentry-reason", item.reason.encode()),
        ("radsentry-code", item.code.encode()),
        ("radsentry-source-topic", item.topic.encode()),
        ("radsentry-source-partition", str(item.partition).encode()),
        ("radsentry-source-offset", str(item.offset).encode()),
        ("radsentry-payload-sha256", item.payload_sha256.encode()),
    ]


def _dead_letter_value(error: InvalidEvent) -> bytes:
    """The redacted record when it parsed as a known schema, else nothing.

    Undecodable, oversize or unknown-schema payloads could hold anything (a raw DICOM file, a
    report with names), so they are not copied: the original stays at its source coordinates
    until topic retention, and the header fingerprint identifies it.
    """
    return orjson.dumps(error.redacted) if error.redacted is not None else b""


@dataclass
class ConsumerThread:
    """Runs an :class:`Ingestor` in a background thread (``serve`` and ``demo``)."""

    settings: Settings
    engine: Engine
    bootstrap: list[str]
    stop_event: threading.Event = field(default_factory=threading.Event)
    stats: IngestStats = field(default_factory=IngestStats)
    _thread: threading.Thread | None = None

    def start(self) -> ConsumerThread:
        self._thread = threading.Thread(target=self._run, name="radsentry-consumer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        limit_torch_threads()
        consumer = make_consumer(self.bootstrap, self.settings.kafka)
        producer = make_producer(self.bootstrap, self.settings.kafka)
        try:
            ingestor = Ingestor(
                self.engine,
                consumer,
                producer,
                self.settings.kafka,
                DriftMonitor(
                    self.settings.drift, RegistryDirections(partial(registry_for, self.settings))
                ),
                subgroup_fields=self.settings.performance.subgroup_fields,
            )
            ingestor.stats = self.stats
            ingestor.run(self.stop_event)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=PRODUCER_CLOSE_S)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the ingestor to stop after the batch in hand (stored and committed), and wait
        up to ``timeout`` seconds for it."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
