"""Alerts and drift checks for the API: reading, the alert lifecycle, publishing, re-baselining.

Lifecycle: ``open -> acknowledged -> resolved`` (and ``open -> resolved``); anything else is an
:class:`IllegalTransition`. New alerts are published to ``radsentry.alerts`` from the table
(an outbox): ``published_at`` is set only after the broker acknowledged, so an alert stored by a
batch whose process died before publishing is published by the next :func:`publish_pending`.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from kafka import KafkaProducer
from sqlalchemy import Connection, Engine, func, select, update

from monitor.drift.alerts import Alert, StreamKey
from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.events import InferenceEvent
from monitor.service import change_log
from monitor.service.db import as_utc
from monitor.service.drift_store import apply_updates, record_references, stream_matches
from monitor.service.models import AlertRow, DriftCheckRow, DriftStreamRow
from monitor.service.store import Page, page_of, table_of

AlertStatus = Literal["open", "acknowledged", "resolved"]
Action = Literal["acknowledge", "resolve"]
_ALLOWED: dict[Action, tuple[AlertStatus, ...]] = {
    "acknowledge": ("open",),
    "resolve": ("open", "acknowledged"),
}
_NEXT: dict[Action, AlertStatus] = {"acknowledge": "acknowledged", "resolve": "resolved"}


class AlertNotFound(LookupError):
    pass


class StreamNotFound(LookupError):
    pass


class IllegalTransition(ValueError):
    pass


AlertPage = Page[AlertRow]


def list_alerts(
    engine: Engine,
    *,
    site_id: str | None = None,
    site_ids: Collection[str] | None = None,
    status: AlertStatus | None = None,
    detector: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> AlertPage:
    """Alerts, newest first, filtered and paginated; ``total`` counts all that match.
    ``site_ids`` restricts them to those sites (a site manager's)."""
    conditions = []
    if site_id is not None:
        conditions.append(AlertRow.site_id == site_id)
    if site_ids is not None:
        conditions.append(AlertRow.site_id.in_(site_ids))
    if status is not None:
        conditions.append(AlertRow.status == status)
    if detector is not None:
        conditions.append(AlertRow.detector == detector)
    order = (AlertRow.occurred_at.desc(), AlertRow.alert_id)
    return page_of(engine, AlertRow, conditions, order, limit, offset)


def get_alert(engine: Engine, alert_id: uuid.UUID) -> AlertRow:
    with engine.connect() as connection:
        row = connection.execute(select(AlertRow).where(AlertRow.alert_id == alert_id)).first()
    if row is None:
        raise AlertNotFound(f"no alert {alert_id}")
    return AlertRow(**row._mapping)


def transition(
    engine: Engine, alert_id: uuid.UUID, action: Action, by: str, note: str | None
) -> AlertRow:
    """Acknowledge or resolve an alert, recording who, when and an optional note."""
    now = datetime.now(UTC)
    table = table_of(AlertRow)
    values: dict[str, Any] = {"status": _NEXT[action]}
    values |= (
        {"acknowledged_by": by, "acknowledged_at": now}
        if action == "acknowledge"
        else {"resolved_by": by, "resolved_at": now}
    )
    if note is not None:
        values["note"] = note
    with engine.begin() as connection:
        current = connection.scalar(
            select(table.c.status).where(table.c.alert_id == alert_id).with_for_update()
        )
        if current is None:
            raise AlertNotFound(f"no alert {alert_id}")
        if current not in _ALLOWED[action]:
            raise IllegalTransition(f"cannot {action} an alert that is {current}")
        connection.execute(update(table).where(table.c.alert_id == alert_id).values(**values))
    return get_alert(engine, alert_id)


def latest_checks(engine: Engine, site_id: str) -> list[DriftCheckRow]:
    """The latest check per (model, version, detector) at ``site_id``."""
    table = table_of(DriftCheckRow)
    newest = (
        select(func.max(table.c.id))
        .where(table.c.site_id == site_id)
        .group_by(table.c.model_name, table.c.model_version, table.c.detector)
    )
    with engine.connect() as connection:
        rows = connection.execute(
            select(DriftCheckRow)
            .where(DriftCheckRow.id.in_(newest))
            .order_by(DriftCheckRow.model_name, DriftCheckRow.detector)
        )
        return [DriftCheckRow(**row._mapping) for row in rows]


def site_streams(engine: Engine, site_id: str) -> list[DriftStreamRow]:
    with engine.connect() as connection:
        rows = connection.execute(select(DriftStreamRow).where(DriftStreamRow.site_id == site_id))
        return [DriftStreamRow(**row._mapping) for row in rows]


def rebaseline(
    engine: Engine,
    config: EngineConfig,
    key: StreamKey,
    *,
    requested_by: str,
    reason: str,
    events: Sequence[InferenceEvent] | None = None,
) -> dict[str, Any]:
    """Give a stream a new reference: its next events, or ``events`` (uploaded).

    Runs the engine's own :meth:`~monitor.drift.engine.DriftEngine.rebaseline` on the stored
    state under the stream's row lock and bumps ``state_version``, so the consumer reloads it.
    Returns the new reference's provenance. Raises StreamNotFound for a stream never seen
    when no events are uploaded.
    """
    now = datetime.now(UTC)
    table = table_of(DriftStreamRow)
    drift = DriftEngine(config)
    with engine.begin() as connection:
        row = _locked_stream(connection, key)
        if row is None and events is None:
            raise StreamNotFound(f"no events seen for {key}")
        if row is not None:
            drift.restore(bytes(row.state), bytes(row.reference_state))
        outcome = drift.rebaseline(
            key,
            requested_by=requested_by,
            reason=reason,
            requested_at=now.timestamp(),
            events=events,
        )
        info = drift.streams[key].reference_info
        values = {
            "state": drift.export(key),
            "reference_state": drift.export_reference(key),
            "state_version": (row.state_version if row is not None else 0) + 1,
            "reference": info.model_dump(mode="json"),
            "updated_at": now,
        }
        if row is None:
            connection.execute(
                table.insert().values(
                    site_id=key.site_id,
                    model_name=key.model_name,
                    model_version=key.model_version,
                    events_seen=0,
                    **values,
                )
            )
        else:
            connection.execute(update(table).where(stream_matches(table, key)).values(**values))
        apply_updates(connection, outcome.updates)
        record_references(connection, [(key, info)], now)
        change_log.append(
            connection,
            change_log.Entry(
                actor=requested_by,
                action="rebaseline",
                subject=f"{key.site_id}/{key.model_name}/{key.model_version}",
                details={
                    "reference_id": str(info.reference_id),
                    "source": "upload" if events is not None else "next_events",
                    "config_fingerprint": config.fingerprint(),
                },
                reason=reason,
            ),
            now,
        )
    return info.model_dump(mode="json")


def _locked_stream(connection: Connection, key: StreamKey) -> Any:
    table = table_of(DriftStreamRow)
    statement = select(table.c.state, table.c.reference_state, table.c.state_version).where(
        stream_matches(table, key)
    )
    if connection.dialect.name == "postgresql":
        statement = statement.with_for_update()
    return connection.execute(statement).first()


def publish_pending(engine: Engine, producer: KafkaProducer, topic: str, timeout_s: float) -> int:
    """Publish alerts not yet published (keyed by site), then mark them; returns how many."""
    table = table_of(AlertRow)
    with engine.connect() as connection:
        rows = [
            AlertRow(**row._mapping)
            for row in connection.execute(
                select(AlertRow)
                .where(AlertRow.published_at.is_(None))
                .order_by(AlertRow.created_at)
                .limit(1000)
            )
        ]
    if not rows:
        return 0
    futures = [
        producer.send(topic, key=row.site_id.encode(), value=orjson.dumps(alert_document(row)))
        for row in rows
    ]
    producer.flush()
    for future in futures:
        future.get(timeout=timeout_s)
    with engine.begin() as connection:
        connection.execute(
            update(table)
            .where(table.c.alert_id.in_([row.alert_id for row in rows]))
            .values(published_at=datetime.now(UTC))
        )
    return len(rows)


def alert_document(row: AlertRow) -> dict[str, Any]:
    """The ``drift-alert/v1`` JSON of a stored alert: ``Alert.to_json``, as the backtest writes."""
    return Alert(
        alert_id=row.alert_id,
        key=StreamKey(row.site_id, row.model_name, row.model_version),
        detector=row.detector,
        features=tuple(row.features),
        occurred_at=as_utc(row.occurred_at),
        since=as_utc(row.since),
        window_start=as_utc(row.window_start),
        window_end=as_utc(row.window_end),
        statistic=row.statistic,
        p_value=row.p_value,
        effect_size=row.effect_size,
        effect_size_name=row.effect_size_name,
        explanation=row.explanation,
        config_fingerprint=row.config_fingerprint,
        reference_id=row.reference_id,
    ).to_json()
