"""``radsentry backtest --labels``: drift and performance alerts from history, through the
service's own code.

Performance tracking reads joined labels from the database, so a backtest with labels replays
both files, merged in event-time order, into a scratch PostgreSQL database (an embedded server
of its own in the temporary folder, ``embedded_pg.scratch_database``) exactly as the consumer
stores a batch (``ingest.store.store_batch`` with :class:`DriftMonitor`: inbox, events, label join,
drift engine), and runs the tracker (``performance.store.refresh``, with label expiry at event
time) every ``refresh_every`` labels and at the end. The alerts file holds every alert the
``alerts`` table received, drift and performance alike, as ``drift-alert/v1`` lines. Drift
alerts are those the plain backtest writes for the same events (same engine, same order).
The summary (:func:`summary_tables`) counts performance alerts per stream, finding and rule,
beside each finding's labelled predictions at the last refresh.
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
from rich.table import Table
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
    reported,
)
from monitor.service.db import as_utc, engine_scope
from monitor.service.drift.alerts import alert_document
from monitor.service.drift.store import DriftMonitor
from monitor.service.drift.streams import rebaseline
from monitor.service.embedded_pg import scratch_database
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import AlertRow
from monitor.service.performance.labels import expire_unmatched
from monitor.service.performance.store import FLEET, RefreshCache, Snapshot, refresh
from monitor.service.settings import PerformanceSettings

BATCH = 1000
PERFORMANCE_PREFIX = "performance."
"""Performance alerts' detectors are ``performance.<rule>``; their features, ``[finding]``."""

FindingKey = tuple[StreamKey, str]
"""A stream and one finding labelled for it: what the tracker computes metrics for."""


@dataclass
class RuleTally:
    """The performance alerts one rule raised for one stream and finding."""

    alerts: int = 0
    first_at: datetime | None = None
    """Event time of the first (``occurred_at``)."""


@dataclass(frozen=True, slots=True)
class Coverage:
    """A stream's finding at the last refresh: its predictions and, of those, how many were
    joined to a label in force (the cumulative window)."""

    predicted: int
    labelled: int


@dataclass
class LabelBacktestSummary:
    config_fingerprint: str
    events: LineCounts = field(default_factory=LineCounts)
    labels: LineCounts = field(default_factory=LineCounts)
    refreshes: int = 0
    alerts_by_detector: dict[str, int] = field(default_factory=dict)
    performance_alerts: dict[tuple[FindingKey, str], RuleTally] = field(default_factory=dict)
    """Per (stream, finding) and rule (the detector without ``performance.``)."""
    coverage: dict[FindingKey, Coverage] = field(default_factory=dict)
    """Every tracked (stream, finding) at the last refresh."""
    elapsed_s: float = 0.0

    @property
    def alerts(self) -> int:
        return sum(self.alerts_by_detector.values())

    @property
    def drift_alerts_by_detector(self) -> dict[str, int]:
        return {
            detector: count
            for detector, count in self.alerts_by_detector.items()
            if not detector.startswith(PERFORMANCE_PREFIX)
        }

    def record_alert(self, alert: AlertRow) -> None:
        """Count an alert the replay wrote, by detector and, for performance, by rule."""
        detector = alert.detector
        self.alerts_by_detector[detector] = self.alerts_by_detector.get(detector, 0) + 1
        if not detector.startswith(PERFORMANCE_PREFIX):
            return
        stream = StreamKey(alert.site_id, alert.model_name, alert.model_version)
        rule = detector.removeprefix(PERFORMANCE_PREFIX)
        tally = self.performance_alerts.setdefault(((stream, alert.features[0]), rule), RuleTally())
        tally.alerts += 1
        at = as_utc(alert.occurred_at)
        tally.first_at = at if tally.first_at is None else min(tally.first_at, at)


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
        database = stack.enter_context(scratch_database(work / "pg"))
        engine = stack.enter_context(engine_scope(database))
        if reference_path is not None:
            _upload_references(engine, config, reference_path, strict)
        events, n_events, _ = ordered_lines(
            events_path, stack, temp_dir=work, on_progress=_per_file(on_progress, "events")
        )
        labels, n_labels, _ = ordered_lines(
            labels_path, stack, temp_dir=work, on_progress=_per_file(on_progress, "labels")
        )
        merged = reported(
            heapq.merge(_timed(events, "events"), _timed(labels, "labels")),
            on_progress,
            "replaying",
            n_events + n_labels,
        )
        _replay(engine, DriftMonitor(config), performance, merged, summary, refresh_every, strict)
        _write_alerts(engine, out_path, summary)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _per_file(hook: ProgressHook | None, file: str) -> ProgressHook | None:
    """``hook`` with the file's name in each phase: both files are read in the same phases."""
    if hook is None:
        return None
    return lambda phase, done, total: hook(f"{file}: {phase}", done, total)


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
    cache = RefreshCache()  # a refresh recomputes the streams that changed since the last
    moment = datetime.fromtimestamp(0, UTC)
    for position, (_, file, number, raw) in enumerate(lines):
        event = _accept(file, number, raw, summary, strict)
        if event is None:
            continue
        moment = event.occurred_at
        batch.append(Delivered(event, f"backtest.{file}", 0, position))
        labels_since_refresh += isinstance(event, LabelEvent)
        if len(batch) >= BATCH or labels_since_refresh >= refresh_every:
            store_batch(
                engine, batch, [], monitor.process, subgroup_fields=performance.subgroup_fields
            )
            batch = []
        if labels_since_refresh >= refresh_every:
            _refresh(engine, performance, moment, summary, cache)
            labels_since_refresh = 0
    if batch:
        store_batch(engine, batch, [], monitor.process, subgroup_fields=performance.subgroup_fields)
    snapshots = _refresh(engine, performance, moment, summary, cache)
    summary.coverage = {
        (StreamKey(s.site_id, s.model_name, s.model_version), s.finding): Coverage(
            s.predicted, s.labelled
        )
        for s in snapshots
        if s.window == "cumulative" and s.site_id != FLEET  # the table is per site
    }


def _refresh(
    engine: Engine,
    performance: PerformanceSettings,
    moment: datetime,
    summary: LabelBacktestSummary,
    cache: RefreshCache,
) -> list[Snapshot]:
    """The tracker as its scheduled job runs it, at event time ``moment``."""
    expire_unmatched(engine, timedelta(days=performance.label_horizon_days), now=moment)
    snapshots = refresh(engine, performance, now=moment, cache=cache)
    summary.refreshes += 1
    return snapshots


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
                summary.record_alert(alert)
    partial.replace(out_path)


def summary_tables(summary: LabelBacktestSummary, max_rows: int = 60) -> tuple[Table, Table]:
    """Per stream, finding and rule: performance alerts and the first one's event time, beside
    the finding's predictions and labelled predictions at the last refresh (a finding without
    alerts gets one row, rule "–"); then the totals, drift alerts by detector among them.

    Beyond ``max_rows`` rows only those with alerts are listed (a caption says so).
    """
    rows = _performance_rows(summary)
    shown = rows if len(rows) <= max_rows else [row for row in rows if row[2] is not None]
    caption = f"{len(rows) - len(shown)} quiet rows not shown" if len(shown) < len(rows) else None
    detail = Table("site", "model", "finding", "rule", title="Performance alerts", caption=caption)
    for name in ("alerts", "first alert (UTC)", "labelled", "predicted"):
        detail.add_column(name, justify="right")
    for (stream, finding), rule, tally in shown:
        coverage = summary.coverage.get((stream, finding))
        first = tally.first_at if tally is not None else None
        detail.add_row(
            stream.site_id,
            f"{stream.model_name} {stream.model_version}",
            finding,
            rule or "–",
            f"{tally.alerts if tally is not None else 0:,}",
            "–" if first is None else f"{first:%Y-%m-%d %H:%M}",
            "–" if coverage is None else f"{coverage.labelled:,}",
            "–" if coverage is None else f"{coverage.predicted:,}",
        )
    totals = Table(title="Totals", show_header=False)
    for label, value in _totals(summary):
        totals.add_row(label, value)
    return detail, totals


def _performance_rows(
    summary: LabelBacktestSummary,
) -> list[tuple[FindingKey, str | None, RuleTally | None]]:
    """(stream and finding, rule, its alerts) sorted; (key, None, None) for a quiet finding."""
    by_finding: dict[FindingKey, list[tuple[str, RuleTally]]] = {
        key: [] for key in summary.coverage
    }
    for (key, rule), tally in summary.performance_alerts.items():
        by_finding.setdefault(key, []).append((rule, tally))
    rows: list[tuple[FindingKey, str | None, RuleTally | None]] = []
    for key, rules in sorted(by_finding.items(), key=lambda item: item[0]):
        rules.sort(key=lambda item: item[0])
        rows += [(key, rule, tally) for rule, tally in rules] or [(key, None, None)]
    return rows


def _totals(summary: LabelBacktestSummary) -> list[tuple[str, str]]:
    events, labels = summary.events, summary.labels
    lines = events.accepted + labels.accepted
    performance = sum(tally.alerts for tally in summary.performance_alerts.values())
    drift = summary.drift_alerts_by_detector
    return [
        ("inference events replayed", f"{events.accepted:,}"),
        ("label events replayed", f"{labels.accepted:,}"),
        ("skipped (other schemas)", f"{events.skipped + labels.skipped:,}"),
        ("invalid lines", f"{events.invalid + labels.invalid:,}"),
        ("performance refreshes", f"{summary.refreshes:,}"),
        ("performance alerts", f"{performance:,}"),
        ("drift alerts", f"{sum(drift.values()):,}"),
        *((f"  {detector}", f"{count:,}") for detector, count in sorted(drift.items())),
        ("elapsed", f"{summary.elapsed_s:,.1f} s"),
        (
            "events/s (both files)",
            f"{lines / summary.elapsed_s:,.0f}" if summary.elapsed_s > 0 else "–",
        ),
        ("config fingerprint", summary.config_fingerprint[:16]),
    ]
