"""The drift engine inside the ingestion transaction: state, checks and alerts stored atomically.

For each consumer batch, in the same database transaction that claims the batch's event ids
(``ingest.store.store_batch``), :class:`DriftMonitor`:

1. locks the rows of the streams in the batch (``SELECT ... FOR UPDATE`` on PostgreSQL) and
   reloads any stream whose stored ``state_version`` differs from the cached one (another
   consumer owned its partition for a while, or the API re-baselined it);
2. feeds only the *newly stored* events to :class:`~monitor.drift.engine.DriftEngine`, in
   partition order, so a redelivered event is never counted twice;
3. writes the new stream states, the checks, the alerts and alert updates.

The Kafka offsets are committed only after this transaction, so the saved state always reflects
exactly the events whose offsets are committed: a crash before the commit redelivers the batch,
and the state it is replayed onto is the one saved with the previous batch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from sqlalchemy import Connection, select, tuple_, update

from monitor.drift.alerts import Alert, AlertUpdate, Check, StreamKey
from monitor.drift.config import EngineConfig
from monitor.drift.engine import DirectionSource, DriftEngine, Outcome
from monitor.drift.stream import ReferenceInfo
from monitor.events import InferenceEvent
from monitor.service.db import copy_rows, table_of
from monitor.service.drift.alerts import apply_updates, write_alerts
from monitor.service.drift.streams import record_references, stream_matches
from monitor.service.errors import ServiceError
from monitor.service.kafka import Delivered
from monitor.service.models import DriftCheckRow, DriftStreamRow

MAX_ATTRIBUTIONS_STORED = 25


def limit_torch_threads(threads: int = 1) -> None:
    """Give torch one thread in a consumer process (call once at start).

    The drift kernels are small (a few hundred rows): with several threads on a busy 2-core
    host, torch's threads contend with the consumer, the database driver and each other, and an
    MMD window took 10x longer (docs/benchmarks.md). Parallelism comes from more consumers.
    """
    torch.set_num_threads(threads)


class StaleStateError(ServiceError, RuntimeError):
    """A stream's stored state moved under us; the batch is retried on the newer state."""


@dataclass
class DriftBatch:
    """What the drift engine made of one batch (for metrics and the alerts topic)."""

    checks: list[Check] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    updates: list[AlertUpdate] = field(default_factory=list)
    time_in_alarm: dict[tuple[StreamKey, str], float] = field(default_factory=dict)
    """After the batch, per checked (stream, detector): the share of its latest checks inside
    an open episode (``AlarmState.time_in_alarm``)."""


class DriftMonitor:
    """Caches stream states between batches; see the module docstring."""

    def __init__(self, config: EngineConfig, directions: DirectionSource | None = None) -> None:
        """``directions``: the known embedding directions for explanations
        (``monitor.service.drift.directions``); None: explanations name components only."""
        self.config = config
        self.engine = DriftEngine(config, directions)
        self._versions: dict[StreamKey, int] = {}
        self._seen: dict[StreamKey, int] = {}
        self._saved_reference: dict[StreamKey, int] = {}  # reference_revision last saved

    def forget(self) -> None:
        """Drop every cached state (after a failed batch: the database holds the truth)."""
        self.engine.streams.clear()
        self._versions.clear()
        self._seen.clear()
        self._saved_reference.clear()

    def process(self, connection: Connection, stored: Sequence[Delivered]) -> DriftBatch:
        """Run the engine on the newly stored inference events and save what it produced."""
        items = [item for item in stored if isinstance(item.event, InferenceEvent)]
        if not items:
            return DriftBatch()
        keys = {_key(item.event) for item in items}  # type: ignore[arg-type]
        try:
            self._sync(connection, keys)
            batch, frozen, last_source, counts = self._run(items)
            now = datetime.now(UTC)
            self._save(connection, keys, last_source, counts, now)
            write_checks(connection, batch.checks, self._reference_ids(), now)
            write_alerts(connection, batch.alerts, now)
            apply_updates(connection, batch.updates)
            record_references(connection, frozen, now)
        except Exception:
            self.forget()
            raise
        return batch

    def _run(
        self, items: list[Delivered]
    ) -> tuple[
        DriftBatch, list[tuple[StreamKey, ReferenceInfo]], dict[StreamKey, str], Counter[StreamKey]
    ]:
        batch = DriftBatch()
        frozen: list[tuple[StreamKey, ReferenceInfo]] = []
        last_source: dict[StreamKey, str] = {}
        counts: Counter[StreamKey] = Counter()
        for item in items:
            event = item.event
            assert isinstance(event, InferenceEvent)
            key = _key(event)
            outcome: Outcome = self.engine.process(event)
            batch.checks += outcome.checks
            batch.alerts += outcome.alerts
            batch.updates += outcome.updates
            if outcome.reference_frozen is not None:
                frozen.append((key, outcome.reference_frozen))
            last_source[key] = f"{item.topic}[{item.partition}]@{item.offset}"
            counts[key] += 1
        for check in batch.checks:
            alarm = self.engine.streams[check.key].alarms.get(check.detector)
            if alarm is not None and (share := alarm.time_in_alarm) is not None:
                batch.time_in_alarm[(check.key, check.detector)] = share
        return batch, frozen, last_source, counts

    def _sync(self, connection: Connection, keys: set[StreamKey]) -> None:
        table = table_of(DriftStreamRow)
        columns = (table.c.site_id, table.c.model_name, table.c.model_version)
        statement = (
            select(*columns, table.c.state_version, table.c.events_seen)
            .where(tuple_(*columns).in_([(k.site_id, k.model_name, k.model_version) for k in keys]))
            .with_for_update()
        )
        stored = {StreamKey(*row[:3]): (row[3], row[4]) for row in connection.execute(statement)}
        for key in keys:
            if key not in stored:
                self.engine.streams.pop(key, None)
                self._versions.pop(key, None)
                self._seen[key] = 0
            elif self._versions.get(key) != stored[key][0] or key not in self.engine.streams:
                blob, reference_blob = connection.execute(
                    select(table.c.state, table.c.reference_state).where(stream_matches(table, key))
                ).one()
                self.engine.restore(bytes(blob), bytes(reference_blob))
                self._saved_reference[key] = self.engine.streams[key].reference_revision
                self._versions[key], self._seen[key] = stored[key]

    def _save(
        self,
        connection: Connection,
        keys: Iterable[StreamKey],
        last_source: dict[StreamKey, str],
        counts: Counter[StreamKey],
        now: datetime,
    ) -> None:
        table = table_of(DriftStreamRow)
        for key in keys:
            stream = self.engine.streams[key]
            version = self._versions.get(key, 0) + 1
            seen = self._seen.get(key, 0) + counts[key]
            values: dict[str, Any] = {
                "state": self.engine.export(key),
                "state_version": version,
                "reference": stream.reference_progress().model_dump(mode="json"),
                "events_seen": seen,
                "last_source": last_source.get(key),
                "updated_at": now,
            }
            if self._saved_reference.get(key) != stream.reference_revision:
                values["reference_state"] = self.engine.export_reference(key)
            if version == 1:
                connection.execute(
                    table.insert().values(
                        site_id=key.site_id,
                        model_name=key.model_name,
                        model_version=key.model_version,
                        **values,
                    )
                )
            else:
                # The row is locked (FOR UPDATE) on PostgreSQL; the version check also catches
                # a writer that slipped in on a database without row locks.
                changed = connection.execute(
                    update(table)
                    .where(stream_matches(table, key), table.c.state_version == version - 1)
                    .values(**values)
                ).rowcount
                if changed != 1:
                    raise StaleStateError(f"{key} was saved by someone else meanwhile")
            self._versions[key], self._seen[key] = version, seen
            self._saved_reference[key] = stream.reference_revision

    def _reference_ids(self) -> dict[StreamKey, Any]:
        return {key: s.reference_info.reference_id for key, s in self.engine.streams.items()}


def write_checks(
    connection: Connection,
    checks: Sequence[Check],
    reference_ids: dict[StreamKey, Any],
    now: datetime,
) -> None:
    if not checks:
        return
    rows = [_check_row(check, reference_ids[check.key], now) for check in checks]
    copy_rows(connection, table_of(DriftCheckRow), rows)


def _check_row(check: Check, reference_id: Any, now: datetime) -> dict[str, Any]:
    result = check.result
    return {
        "site_id": check.key.site_id,
        "model_name": check.key.model_name,
        "model_version": check.key.model_version,
        "detector": check.detector,
        "window_start": check.window_start,
        "window_end": check.window_end,
        "n_window": check.n_window,
        "is_drift": result.is_drift if result else None,
        "statistic": result.statistic if result else None,
        "p_value": result.p_value if result else None,
        "threshold": result.threshold if result else None,
        "effect_size": result.effect_size if result else None,
        "effect_size_name": result.effect_size_name if result else None,
        "severity": check.severity.value if check.severity else None,
        "attributions": [dataclasses.asdict(a) for a in (result.attributions if result else ())][
            :MAX_ATTRIBUTIONS_STORED
        ],
        "skipped": check.skipped,
        "config_fingerprint": result.config_fingerprint if result else None,
        "reference_id": reference_id,
        "checked_at": now,
    }


def _key(event: InferenceEvent) -> StreamKey:
    return StreamKey(event.site_id, event.model_name, event.model_version)
