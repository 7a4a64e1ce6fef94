"""``radsentry backtest --labels``: drift and performance alerts from history, through the
service's own code.

Performance tracking reads joined labels from the database, so a backtest with labels replays
both files, merged in event-time order, into a scratch SQLite database exactly as the consumer
stores a batch (``ingest.store.store_batch`` with :class:`DriftMonitor`: inbox, events, label join,
drift engine), and runs the tracker (``performance.store.refresh``, with label expiry at event
time) every ``refresh_every`` labels and at the end. The alerts file holds every alert the
``alerts`` table received, drift and performance alike, as ``drift-alert/v1`` lines. Drift
alerts are those the plain backtest writes for the same events (same engine, same order).
"""

from __future__ import annotations

import heapq
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from sqlalchemy import Engine, select

from monitor.drift.alerts import StreamKey
from monitor.drift.base import InsufficientDataError
from monitor.drift.config import EngineConfig
from monitor.events import InferenceEvent, InvalidEvent, LabelEvent
from monitor.events import parse_event as parse_record
from monitor.service.backtest.replay import (
    BacktestError,
    Line,
    LineCounts,
    ProgressHook,
    event_time,
    ordered_lines,
    read_lines,
)
from monitor.service.db import engine_scope
from monitor.service.drift.alerts import alert_document
from monitor.service.drift.store import DriftMonitor
from monitor.service.drift.streams import rebaseline
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import AlertRow
from monitor.service.performance.labels import expire_unmatched
from monitor.service.performance.store import refresh
from monitor.service.settings import PerformanceSettings

BATCH = 1000


@dataclass
class LabelBacktestSummary:
    config_fingerprint: str
    events: LineCounts = field(default_factory=LineCounts)
    labels: LineCounts = field(default_factory=LineCounts)
    refreshes: int = 0
    alerts_by_detector: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def alerts(self) -> int:
        return sum(self.alerts_by_detector.values())


def run_backtest_with_labels(
    events_path: Path,
    labels_path: Path,
    out_path: Path,
    *,
    config: EngineConfig | None = None,
    performance: PerformanceSettings | None = None,
    reference_path: Path | None = None,
    refresh_every: int = 500,
    strict: bool = False,
    temp_dir: Path | None = None,
    on_progress: ProgressHook | None = None,
) -> LabelBacktestSummary:
    """Replay events and labels in event-time order through the consumer's storage and the
    performance tracker; write every alert to ``out_path``. Raises :class:`BacktestError`."""
    started = time.perf_counter()
    config = config or EngineConfig()
    performance = performance or PerformanceSettings()
    summary = LabelBacktestSummary(config_fingerprint=config.fingerprint())
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=temp_dir)))
        engine = stack.enter_context(engine_scope(f"sqlite:///{work / 'backtest.db'}"))
        if reference_path is not None:
            _upload_references(engine, config, reference_path, strict)
        events, _, _ = ordered_lines(events_path, stack, temp_dir=work, on_progress=on_progress)
        labels, _, _ = ordered_lines(labels_path, stack, temp_dir=work, on_progress=on_progress)
        merged = heapq.merge(_timed(events, "events"), _timed(labels, "labels"))
        _replay(engine, DriftMonitor(config), performance, merged, summary, refresh_every, strict)
        _write_alerts(engine, out_path, summary)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _timed(lines: Iterable[Line], file: str) -> Iterator[tuple[float, str, int, bytes]]:
    for number, raw in lines:
        moment = event_time(raw)
        yield (-math.inf if moment is None else moment, file, number, raw)


def _replay(
    engine: Engine,
    monitor: DriftMonitor,
    performance: PerformanceSettings,
    lines: Iterable[tuple[float, str, int, bytes]],
    summary: LabelBacktestSummary,
    refresh_every: int,
    strict: bool,
) -> None:
    batch: list[Delivered] = []
    labels_since_refresh = 0
    moment = datetime.fromtimestamp(0, UTC)
    for position, (_, file, number, raw) in enumerate(lines):
        event = _accept(file, number, raw, summary, strict)
        if event is None:
            continue
        moment = event.occurred_at
        batch.append(Delivered(event, f"backtest.{file}", 0, position))
        labels_since_refresh += isinstance(event, LabelEvent)
        if len(batch) >= BATCH or labels_since_refresh >= refresh_every:
            store_batch(engine, batch, [], monitor.process)
            batch = []
        if labels_since_refresh >= refresh_every:
            _refresh(engine, performance, moment, summary)
            labels_since_refresh = 0
    if batch:
        store_batch(engine, batch, [], monitor.process)
    _refresh(engine, performance, moment, summary)


def _refresh(
    engine: Engine,
    performance: PerformanceSettings,
    moment: datetime,
    summary: LabelBacktestSummary,
) -> None:
    """The tracker as its scheduled job runs it, at event time ``moment``."""
    expire_unmatched(engine, timedelta(days=performance.label_horizon_days), now=moment)
    refresh(engine, performance, now=moment)
    summary.refreshes += 1


def _accept(
    file: str, number: int, raw: bytes, summary: LabelBacktestSummary, strict: bool
) -> InferenceEvent | LabelEvent | None:
    counts = summary.events if file == "events" else summary.labels
    try:
        event = parse_record(raw)
    except InvalidEvent as exc:
        counts.invalid += 1
        if strict:
            raise BacktestError(f"{file} line {number}: {exc.reason}") from None
        return None
    expected = InferenceEvent if file == "events" else LabelEvent
    if not isinstance(event, expected):
        counts.skipped += 1
        return None
    counts.accepted += 1
    return event


def _upload_references(engine: Engine, config: EngineConfig, path: Path, strict: bool) -> None:
    """Every stream in ``path`` gets those events as its reference, as the API would do it."""
    by_stream: dict[StreamKey, list[InferenceEvent]] = {}
    for number, raw in read_lines(path):
        try:
            event = parse_record(raw)
        except InvalidEvent as exc:
            if strict:
                raise BacktestError(f"reference line {number}: {exc.reason}") from None
            continue
        if isinstance(event, InferenceEvent):
            key = StreamKey(event.site_id, event.model_name, event.model_version)
            by_stream.setdefault(key, []).append(event)
    for key, events in sorted(by_stream.items()):
        events.sort(key=lambda e: e.occurred_at)
        try:
            rebaseline(
                engine,
                config,
                key,
                requested_by="backtest",
                reason=f"--reference {path}",
                events=events,
            )
        except InsufficientDataError as exc:
            raise BacktestError(f"reference for {key} in {path}: {exc}") from None


def _write_alerts(engine: Engine, out_path: Path, summary: LabelBacktestSummary) -> None:
    partial = out_path.with_name(out_path.name + ".partial")
    with engine.connect() as connection:
        rows = connection.execute(
            select(AlertRow).order_by(AlertRow.occurred_at, AlertRow.alert_id)
        )
        with partial.open("wb") as sink:
            for row in rows:
                alert = AlertRow(**row._mapping)
                sink.write(orjson.dumps(alert_document(alert), option=orjson.OPT_APPEND_NEWLINE))
                summary.alerts_by_detector[alert.detector] = (
                    summary.alerts_by_detector.get(alert.detector, 0) + 1
                )
    partial.replace(out_path)
