"""Alerts and drift checks for the API: reading, the alert lifecycle, publishing, re-baselining,
and raising an alert from outside the drift engine (:func:`raise_alert`).

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
from sqlalchemy import Connection, Engine, case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from monitor.drift.alerts import Alert, AlertUpdate, StreamKey
from monitor.drift.severity import Severity, at_least
from monitor.service.db import Page, as_utc, page_of, table_of
from monitor.service.errors import IllegalTransition, NotFound
from monitor.service.models import AlertRow

AlertStatus = Literal["open", "acknowledged", "resolved"]
Action = Literal["acknowledge", "resolve"]
_ALLOWED: dict[Action, tuple[AlertStatus, ...]] = {
    "acknowledge": ("open",),
    "resolve": ("open", "acknowledged"),
}
_NEXT: dict[Action, AlertStatus] = {"acknowledge": "acknowledged", "resolve": "resolved"}


class AlertNotFound(NotFound):
    pass


AlertPage = Page[AlertRow]


def list_alerts(
    engine: Engine,
    *,
    site_id: str | None = None,
    site_ids: Collection[str] | None = None,
    status: AlertStatus | None = None,
    detector: str | None = None,
    min_severity: Severity | None = None,
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
    if min_severity is not None:
        conditions.append(AlertRow.severity.in_(at_least(min_severity)))
    order = (AlertRow.occurred_at.desc(), AlertRow.alert_id)
    return page_of(engine, AlertRow, conditions, order, limit, offset)


def stream_alerts(engine: Engine, key: StreamKey, limit: int = 20) -> list[AlertRow]:
    """The stream's ``limit`` newest alerts, drifting ones first (the site drift page's)."""
    order = (AlertRow.drift_active.desc(), AlertRow.occurred_at.desc(), AlertRow.alert_id)
    query = (
        select(AlertRow)
        .where(
            AlertRow.site_id == key.site_id,
            AlertRow.model_name == key.model_name,
            AlertRow.model_version == key.model_version,
        )
        .order_by(*order)
        .limit(limit)
    )
    with engine.connect() as connection:
        return [AlertRow(**row._mapping) for row in connection.execute(query)]


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


def raise_alert(engine: Engine, alert: Alert, *, now: datetime | None = None) -> bool:
    """Store one alert raised outside the drift engine (a failed retraining job, say): open,
    and unpublished until :func:`publish_pending` publishes it like every alert.

    Idempotent on ``alert_id``: storing the same alert again adds nothing and returns False.
    The alert opens no drift episode (``drift_active`` False, no drifting checks), so it never
    counts as active drift and cannot itself trigger retraining. ``now``: when it is stored
    (``created_at``), by default the current time.
    """
    with engine.begin() as connection:
        return write_alerts(connection, [alert], now or datetime.now(UTC), drifting=False) == 1


def write_alerts(
    connection: Connection, alerts: Sequence[Alert], now: datetime, *, drifting: bool = True
) -> int:
    """Insert new alerts, open and unpublished, in the caller's transaction; returns how many
    were new (idempotent on their deterministic ``alert_id``). ``drifting``: each opens a drift
    episode (the detectors' alerts), or none (an alert raised by a job)."""
    if not alerts:
        return 0
    table = table_of(AlertRow)
    rows = [
        {
            "alert_id": alert.alert_id,
            "site_id": alert.key.site_id,
            "model_name": alert.key.model_name,
            "model_version": alert.key.model_version,
            "detector": alert.detector,
            "features": list(alert.features),
            "occurred_at": alert.occurred_at,
            "since": alert.since,
            "window_start": alert.window_start,
            "window_end": alert.window_end,
            "statistic": alert.statistic,
            "p_value": alert.p_value,
            "effect_size": alert.effect_size,
            "effect_size_name": alert.effect_size_name,
            "explanation": alert.explanation,
            "config_fingerprint": alert.config_fingerprint,
            "reference_id": alert.reference_id,
            "status": "open",
            "drift_active": drifting,
            "drifting_checks": 1 if drifting else 0,
            "last_drift_at": alert.occurred_at,
            "created_at": now,
            "severity": alert.severity.value,
        }
        for alert in alerts
    ]
    statement = pg_insert(table).on_conflict_do_nothing(index_elements=["alert_id"])
    return connection.execute(statement, rows).rowcount


def apply_updates(connection: Connection, updates: Sequence[AlertUpdate]) -> None:
    """Continue or end open drift episodes (the engine's :class:`AlertUpdate` values)."""
    table = table_of(AlertRow)
    for item in updates:
        where = table.c.alert_id == item.alert_id
        if item.kind == "continued":
            values: dict[str, Any] = {
                "drifting_checks": table.c.drifting_checks + 1,
                "last_drift_at": item.at,
            }
            if item.severity is not None:  # the alert keeps the most serious check it saw
                stored_rank = case(
                    {s.value: s.rank for s in Severity}, value=table.c.severity, else_=1
                )
                values["severity"] = case(
                    (stored_rank < item.severity.rank, item.severity.value),
                    else_=table.c.severity,
                )
            statement = update(table).where(where).values(**values)
        elif item.kind == "sustained":
            statement = (
                update(table)
                .where(where)
                .values(decision_asked_at=item.at, decision_reason=item.reason)
            )
        else:
            statement = (
                update(table)
                .where(where)
                .values(drift_active=False, ended_at=item.at, ended_reason=item.reason)
            )
        connection.execute(statement)


def publish_pending(
    engine: Engine,
    producer: KafkaProducer,
    topic: str,
    timeout_s: float,
    notify_at_least: Severity = Severity.WARNING,
) -> int:
    """Publish alerts not yet published (keyed by site), then mark them; returns how many.
    Alerts below ``notify_at_least`` (``info`` by default) are kept for dashboards and reports,
    never published."""
    table = table_of(AlertRow)
    with engine.connect() as connection:
        rows = [
            AlertRow(**row._mapping)
            for row in connection.execute(
                select(AlertRow)
                .where(
                    AlertRow.published_at.is_(None),
                    AlertRow.severity.in_(at_least(notify_at_least)),
                )
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
        severity=Severity(row.severity),
    ).to_json()
