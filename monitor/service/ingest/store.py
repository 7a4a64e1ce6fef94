"""Persistence for ingestion and the read side of the API.

One call stores one consumer batch in one transaction: the inbox insert decides which events
are new (``ON CONFLICT DO NOTHING RETURNING``), only those are written, and dead letters are
keyed by their source coordinates. A redelivered batch therefore changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from monitor.events import InferenceEvent, InferenceEventV2, LabelEvent
from monitor.service.db import as_utc, copy_rows, table_of
from monitor.service.kafka import Delivered, Rejected
from monitor.service.models import (
    DeadLetter,
    InferenceEventRow,
    LabelEventRow,
)
from monitor.service.performance.labels import apply_labels
from monitor.service.performance.summaries import join_batch
from monitor.service.settings import DEFAULT_SUBGROUP_FIELDS


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    stored: list[Delivered]
    duplicates: int
    dead_lettered: int


@dataclass(frozen=True, slots=True)
class EventCounts:
    count: int
    latest_occurred_at: datetime | None


@dataclass(frozen=True, slots=True)
class SiteSummary:
    site_id: str
    inference: EventCounts
    labels: EventCounts


AfterStore = Callable[[Connection, list[Delivered]], object]
"""Called inside the batch's transaction with the events stored for the first time (in batch
order): the drift engine's state and alerts are saved atomically with the events they reflect."""


def store_batch(
    engine: Engine,
    delivered: Sequence[Delivered],
    rejected: Sequence[Rejected],
    after_store: AfterStore | None = None,
    *,
    subgroup_fields: Sequence[str] = DEFAULT_SUBGROUP_FIELDS,
) -> BatchOutcome:
    """Store a batch exactly once, whatever part of it was stored before.

    The labelled cases it forms or changes are counted in the performance summaries
    (``performance.summaries.join_batch``) per value of each of ``subgroup_fields``.
    """
    now = datetime.now(UTC)
    unique: dict[uuid.UUID, Delivered] = {}
    for item in delivered:
        unique.setdefault(item.event.event_id, item)
    with engine.begin() as connection:
        new_ids = _claim(connection, list(unique.values()), now)
        stored = [item for event_id, item in unique.items() if event_id in new_ids]
        _write_events(connection, stored, now)
        labels = [item.event for item in stored if isinstance(item.event, LabelEvent)]
        transitions = apply_labels(connection, labels, now).transitions if labels else []
        predictions = [item.event for item in stored if isinstance(item.event, InferenceEvent)]
        join_batch(connection, predictions, transitions, subgroup_fields, now)
        if after_store is not None:
            after_store(connection, stored)
        dead_lettered = _write_dead_letters(connection, rejected, now)
    return BatchOutcome(stored, len(delivered) - len(stored), dead_lettered)


# One statement with array parameters: ~10x faster than a multi-row VALUES insert, whose SQL
# text psycopg must re-parse for every batch (benchmarks/bench_ingest.py).
_CLAIM_POSTGRESQL = text(
    """
    INSERT INTO processed_events (event_id, schema_id, topic, partition, "offset", processed_at)
    SELECT claimed.*, :processed_at
    FROM unnest(
        CAST(:event_ids AS uuid[]), CAST(:schema_ids AS text[]), CAST(:topics AS text[]),
        CAST(:partitions AS integer[]), CAST(:offsets AS bigint[])
    ) AS claimed
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)


def _claim(connection: Connection, items: list[Delivered], now: datetime) -> set[uuid.UUID]:
    """Insert the inbox rows; return the event ids that were not there before."""
    if not items:
        return set()
    parameters = {
        "event_ids": [item.event.event_id for item in items],
        "schema_ids": [item.event.schema_id for item in items],
        "topics": [item.topic for item in items],
        "partitions": [item.partition for item in items],
        "offsets": [item.offset for item in items],
        "processed_at": now,
    }
    return set(connection.scalars(_CLAIM_POSTGRESQL, parameters))


def _write_events(connection: Connection, stored: list[Delivered], now: datetime) -> None:
    inference = [
        _inference_row(i.event, now) for i in stored if isinstance(i.event, InferenceEvent)
    ]
    labels = [_label_row(i.event, now) for i in stored if isinstance(i.event, LabelEvent)]
    for table, rows in (
        (table_of(InferenceEventRow), inference),
        (table_of(LabelEventRow), labels),
    ):
        if not rows:
            continue
        copy_rows(connection, table, rows)


def _inference_row(event: InferenceEvent, now: datetime) -> dict[str, Any]:
    v2 = event if isinstance(event, InferenceEventV2) else None
    return {
        "event_id": event.event_id,
        "site_id": event.site_id,
        "model_name": event.model_name,
        "model_version": event.model_version,
        "occurred_at": event.occurred_at,
        "received_at": now,
        "study_key": event.study_key,
        "modality": event.modality,
        "metadata": event.metadata.model_dump(exclude_none=True),
        "pixel_stats": event.pixel_stats,
        "scores": event.prediction.scores,
        "threshold": event.prediction.threshold,
        "dicom_uri": event.dicom_uri,
        "embedding": v2.embedding if v2 is not None else None,
        "embedding_id": v2.embedding_id if v2 is not None else None,
    }


def _label_row(event: LabelEvent, now: datetime) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "site_id": event.site_id,
        "model_name": event.model_name,
        "study_key": event.study_key,
        "occurred_at": event.occurred_at,
        "received_at": now,
        "labels": event.labels,
        "source": event.source.value,
    }


def _write_dead_letters(connection: Connection, rejected: Sequence[Rejected], now: datetime) -> int:
    if not rejected:
        return 0
    table = table_of(DeadLetter)
    rows = [
        {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "code": r.code,
            "reason": r.reason,
            "payload_sha256": r.payload_sha256,
            "payload_bytes": r.payload_bytes,
            "dead_lettered_at": now,
        }
        for r in rejected
    ]
    statement = (
        pg_insert(table)
        .on_conflict_do_nothing(index_elements=["topic", "partition", "offset"])
        .returning(table.c.id)
    )
    return len(list(connection.scalars(statement, rows)))


def list_sites(engine: Engine, site_id: str | None = None) -> list[SiteSummary]:
    """Sites that have sent events (or just ``site_id``), with counts and latest event times."""
    with engine.connect() as connection:
        inference = _counts_by_site(connection, InferenceEventRow, site_id)
        labels = _counts_by_site(connection, LabelEventRow, site_id)
    empty = EventCounts(0, None)
    return [
        SiteSummary(site, inference.get(site, empty), labels.get(site, empty))
        for site in sorted(inference.keys() | labels.keys())
    ]


def site_summary(engine: Engine, site_id: str) -> SiteSummary | None:
    return next(iter(list_sites(engine, site_id)), None)


def latest_inference_times(engine: Engine, since: datetime) -> dict[str, datetime]:
    """The newest inference event's ``occurred_at`` per site, for sites with one after
    ``since``."""
    row = InferenceEventRow
    statement = (
        select(row.site_id, func.max(row.occurred_at))
        .where(row.occurred_at >= since)
        .group_by(row.site_id)
    )
    with engine.connect() as connection:
        return {site: as_utc(latest) for site, latest in connection.execute(statement)}


def _counts_by_site(
    connection: Connection,
    row: type[InferenceEventRow] | type[LabelEventRow],
    site_id: str | None,
) -> dict[str, EventCounts]:
    statement = select(row.site_id, func.count(), func.max(row.occurred_at)).group_by(row.site_id)
    if site_id is not None:
        statement = statement.where(row.site_id == site_id)
    return {
        site: EventCounts(n, as_utc(latest) if latest else None)
        for site, n, latest in connection.execute(statement)
    }


def dead_letter_counts(engine: Engine) -> dict[tuple[str, str], int]:
    """Refused records by (topic, reject code)."""
    statement = select(DeadLetter.topic, DeadLetter.code, func.count()).group_by(
        DeadLetter.topic, DeadLetter.code
    )
    with engine.connect() as connection:
        return {(topic, code): n for topic, code, n in connection.execute(statement)}
