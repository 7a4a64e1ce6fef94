"""Monitored streams, one per (site, model, version): reading their latest checks, recording
their references, and re-baselining (a new reference, under the stream's row lock)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from monitor.drift.alerts import StreamKey
from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.drift.stream import ReferenceInfo
from monitor.events import InferenceEvent
from monitor.service.audit import store as change_log
from monitor.service.db import table_of
from monitor.service.drift.alerts import apply_updates
from monitor.service.errors import NotFound
from monitor.service.models import DriftCheckRow, DriftStreamRow, ReferenceChangeRow


class StreamNotFound(NotFound):
    pass


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
    return connection.execute(statement.with_for_update()).first()


def record_references(
    connection: Connection, changes: Sequence[tuple[StreamKey, ReferenceInfo]], now: datetime
) -> None:
    if not changes:
        return
    rows = [
        {
            "site_id": key.site_id,
            "model_name": key.model_name,
            "model_version": key.model_version,
            "reference_id": info.reference_id,
            "generation": info.generation,
            "source": info.source,
            "requested_by": info.requested_by,
            "reason": info.reason,
            "n_events": info.n_events,
            "recorded_at": now,
        }
        for key, info in changes
    ]
    connection.execute(table_of(ReferenceChangeRow).insert(), rows)


def stream_matches(table: Any, key: StreamKey) -> Any:
    """WHERE clause selecting ``key``'s row in a table keyed by (site, model, version)."""
    return (
        (table.c.site_id == key.site_id)
        & (table.c.model_name == key.model_name)
        & (table.c.model_version == key.model_version)
    )
