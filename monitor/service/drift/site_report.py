"""A stream's reference against its latest events: loading both, and the Evidently report.

The reference rows come from the stream's saved engine state, the current rows from the
stream's latest stored events, both through the engine's own feature layout
(:class:`~monitor.drift.features.FeatureSchema`), so the report shows what the detectors see.
The site drift page (:mod:`monitor.service.drift.site_page`) draws the same two samples.
Evidently is imported only here, when a report is asked for (it takes seconds to import).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import Engine, RowMapping, select

from monitor.drift.alerts import StreamKey
from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.drift.features import FeatureSchema, RowBuffer, Vocabulary
from monitor.drift.stream import StreamState
from monitor.events import InferenceEvent, InferenceEventV2
from monitor.service.db import as_utc
from monitor.service.drift.streams import StreamNotFound
from monitor.service.models import DriftStreamRow, InferenceEventRow

Row = dict[str, float | str | None]


@dataclass(frozen=True, slots=True)
class StreamSamples:
    """A frozen stream restored from its saved state, and its latest events (``current``)."""

    key: StreamKey
    stream: StreamState
    current: RowBuffer


def load_samples(
    engine: Engine,
    config: EngineConfig,
    site_id: str,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    current_size: int | None = None,
) -> StreamSamples:
    """The most recently updated stream at ``site_id`` that matches, and its latest
    ``current_size`` events (default: the configured window size, else 250).

    Raises StreamNotFound when the site has no stream with a reference yet.
    """
    key, blob, reference_blob = _stream(engine, site_id, model_name, model_version)
    drift = DriftEngine(config)
    drift.restore(blob, reference_blob)
    stream = drift.streams[key]
    if not stream.reference_info.frozen:
        raise StreamNotFound(f"{key} is still collecting its reference")
    size = current_size or config.window.size or 250
    current = _latest(engine, key, stream.schema, stream.vocabulary, size)
    return StreamSamples(key, stream, current)


def site_report(
    engine: Engine,
    config: EngineConfig,
    site_id: str,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    current_size: int | None = None,
) -> tuple[StreamKey, str]:
    """The Evidently HTML report of one stream at ``site_id`` (see :func:`load_samples`)."""
    # Evidently takes seconds to import: only when a report is asked for.
    from monitor.service.drift.report import drift_report

    samples = load_samples(
        engine,
        config,
        site_id,
        model_name=model_name,
        model_version=model_version,
        current_size=current_size,
    )
    key, schema, vocabulary = samples.key, samples.stream.schema, samples.stream.vocabulary
    report = drift_report(
        rows(schema, vocabulary, samples.stream.reference),
        rows(schema, vocabulary, samples.current),
        numeric=schema.numeric,
        categorical=schema.categorical,
        title=f"Drift report: {key.site_id}, {key.model_name} {key.model_version}",
    )
    return key, report.html


def rows(schema: FeatureSchema, vocabulary: Vocabulary, buffer: RowBuffer) -> list[Row]:
    """The buffer's events as name -> value rows (None = missing)."""
    numeric = buffer.numeric
    names = schema.numeric
    categorical = buffer.categorical(schema.categorical, vocabulary)
    result: list[Row] = []
    for i in range(len(buffer)):
        values = numeric[i].tolist()
        row: Row = {
            name: None if math.isnan(value) else value
            for name, value in zip(names, values, strict=True)
        }
        row |= {name: column[i] for name, column in categorical.items()}
        result.append(row)
    return result


def _stream(
    engine: Engine, site_id: str, model_name: str | None, model_version: str | None
) -> tuple[StreamKey, bytes, bytes]:
    query = select(DriftStreamRow).where(DriftStreamRow.site_id == site_id)
    if model_name is not None:
        query = query.where(DriftStreamRow.model_name == model_name)
    if model_version is not None:
        query = query.where(DriftStreamRow.model_version == model_version)
    with engine.connect() as connection:
        row = connection.execute(query.order_by(DriftStreamRow.updated_at.desc()).limit(1)).first()
    if row is None:
        raise StreamNotFound(f"no monitored stream at site {site_id!r} matches")
    key = StreamKey(row.site_id, row.model_name, row.model_version)
    return key, bytes(row.state), bytes(row.reference_state)


def _latest(
    engine: Engine, key: StreamKey, schema: FeatureSchema, vocabulary: Vocabulary, limit: int
) -> RowBuffer:
    query = (
        select(InferenceEventRow)
        .where(
            InferenceEventRow.site_id == key.site_id,
            InferenceEventRow.model_name == key.model_name,
            InferenceEventRow.model_version == key.model_version,
        )
        .order_by(InferenceEventRow.occurred_at.desc())
        .limit(limit)
    )
    buffer = RowBuffer(len(schema.numeric), len(schema.categorical))
    with engine.connect() as connection:
        for row in reversed(connection.execute(query).all()):
            event = _event(row._mapping)
            buffer.append(
                schema.numeric_row(event),
                vocabulary.encode(schema.categorical_row(event)),
                event.occurred_at.timestamp(),
            )
    return buffer


def _event(row: RowMapping) -> InferenceEvent:
    """A stored event back as the contract model (only contract fields were stored)."""
    occurred_at = as_utc(row["occurred_at"])
    fields = {
        **{name: row[name] for name in _COPIED},
        "occurred_at": occurred_at,
        "metadata": row["metadata"],
        "prediction": {"scores": row["scores"], "threshold": row["threshold"]},
    }
    if row["embedding"] is not None:  # stored from inference-event/v2
        embedding = {"embedding": row["embedding"], "embedding_id": row["embedding_id"]}
        return InferenceEventV2.model_validate(fields | embedding)
    return InferenceEvent.model_validate(fields)


_COPIED = (
    "event_id",
    "site_id",
    "model_name",
    "model_version",
    "study_key",
    "modality",
    "pixel_stats",
)
