"""Performance tracking: metrics of every site, model version and finding, and fleet-wide.

``refresh`` computes, for each (site, model version, finding) with labelled cases, two windows
from the sufficient statistics kept as labels join (``performance.summaries``): merges of a few
rows, never a re-read of the predictions, so a refresh costs the same after ten years as after
one week:

* ``rolling``: the fewest latest UTC days of prediction time holding at least
  ``rolling_window`` labelled cases (a whole day more at most);
* ``cumulative``: every labelled case of the version (one ``total`` row);

and the same two windows with every site of a model version pooled (``site_id`` :data:`FLEET`).
Metrics are :func:`monitor.performance.sufficient.summary_metrics` (AUROC with DeLong CI from
2048-bin histograms, within 1e-3 of the exact values; sensitivity, specificity, PPV, NPV with
Wilson intervals, exact; ECE and Brier score), per configured subgroup value too, with label
completeness (predictions counted per day) and label delays (a log-binned sketch, 4 %).
Each result is stored as a snapshot row (history for dashboards) and exported as Prometheus
gauges. The operating threshold is the one the latest event carried; events without one are
scored at 0.5, and the snapshot says so.

The label-free estimate and the rules' reference read raw rows, a bounded number of them: the
version's earliest ``estimate_reference`` labelled predictions and its latest
``rolling_window`` predictions. ``summaries.verify`` compares the statistics with the raw rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, Engine, func, select

from monitor.drift.alerts import StreamKey
from monitor.performance.estimate import (
    InsufficientReferenceError,
    compare,
    estimate_performance,
    fit_calibration,
)
from monitor.performance.metrics import BinaryMetrics, Interval, binary_metrics
from monitor.performance.sufficient import PerformanceSummary, SummaryKey, summary_metrics
from monitor.service import metrics
from monitor.service.models import CurrentLabelRow, PerformanceSnapshotRow
from monitor.service.performance.alerts import WindowFacts, evaluate
from monitor.service.performance.labels import JoinedSample, joined_sample, recent_predictions
from monitor.service.performance.summaries import (
    NO_THRESHOLD,
    layout_for,
    pooled,
    predicted,
    read_window,
    stream_marks,
)
from monitor.service.performance.summaries import Window as SummaryWindow
from monitor.service.settings import PerformanceSettings

log = structlog.get_logger(__name__)

Window = Literal["rolling", "cumulative"]
FLEET = "*"
"""``site_id`` of fleet-wide snapshots: every site of the model version (never a site id)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    site_id: str
    model_name: str
    model_version: str
    finding: str
    window: Window
    predicted: int
    """Predictions the window covers: all of the version (cumulative), or those made over the
    time span of the rolling window's labelled cases (rolling)."""
    labelled: int
    """Of those, how many have a label in force (the rolling window's size is
    ``metrics.counts.n``: its labelled cases)."""
    expired_labels: int
    label_delay_hours: dict[str, float] | None
    metrics: BinaryMetrics
    subgroups: list[dict[str, Any]]
    threshold_source: str
    estimate: dict[str, Any] | None = None
    window_start: datetime | None = None
    """Prediction time of the window's first case (None for an empty window)."""
    window_end: datetime | None = None


@dataclass
class RefreshCache:
    """What one process's refreshes keep between runs (the scheduler's job holds one): each
    stream's windows and snapshots with the marks they were computed at
    (``summaries.stream_marks``). A refresh recomputes a stream only when its marks changed
    (new or corrected labels, new predictions), so its cost follows what arrived, not the
    number of sites; streams seen unchanged are stored and exported again as they were (their
    count of expired labels too: it is read again when the stream next changes)."""

    streams: dict[
        tuple[tuple[str, str, str], str], tuple[tuple[Any, ...], _Read, list[Snapshot]]
    ] = field(default_factory=dict)


def refresh(
    engine: Engine,
    settings: PerformanceSettings,
    now: datetime | None = None,
    cache: RefreshCache | None = None,
) -> list[Snapshot]:
    """Recompute and store every snapshot; returns them (also exported as metrics).

    Per site, then fleet-wide (``site_id`` :data:`FLEET`) per model version and finding: the
    sites' windows pooled (the rolling one is every site's rolling window). With ``cache``,
    only the streams whose statistics or predictions changed since its last use.
    """
    now = now or datetime.now(UTC)
    snapshots = []
    with engine.connect() as connection:
        marks = stream_marks(connection)
    sites: dict[tuple[str, str, str], list[_Read]] = {}
    for key, mark in sorted(marks.items()):
        stream, finding = key
        kept = cache.streams.get(key) if cache is not None else None
        if kept is not None and kept[0] == mark:
            read, computed = kept[1], kept[2]
        else:
            read = _read(engine, settings, stream, finding)
            computed = _site_snapshots(engine, settings, stream, finding, read)
            if cache is not None:
                cache.streams[key] = (mark, read, computed)
        sites.setdefault((stream[1], stream[2], finding), []).append(read)
        snapshots += computed
    for (model_name, version, finding), reads in sorted(sites.items()):
        stream = (FLEET, model_name, version)
        snapshots += [
            _snapshot(
                settings,
                stream,
                finding,
                "rolling",
                pooled([r.rolling for r in reads]),
                sum(r.recent for r in reads),
                sum(r.expired for r in reads),
            ),
            _snapshot(
                settings,
                stream,
                finding,
                "cumulative",
                pooled([r.cumulative for r in reads]),
                sum(r.predicted for r in reads),
                sum(r.expired for r in reads),
            ),
        ]
    _store(engine, snapshots, settings, now)
    for snapshot in snapshots:
        _export(snapshot)
    return snapshots


def _site_snapshots(
    engine: Engine,
    settings: PerformanceSettings,
    stream: tuple[str, str, str],
    finding: str,
    read: _Read,
) -> list[Snapshot]:
    """The rolling and cumulative snapshots of one site's stream; the rules checked."""
    site_id, model_name, version = stream
    # The version's earliest labelled predictions at the site: what the estimate is
    # calibrated on and the rules compare with. Read raw, but a fixed number of them.
    reference = joined_sample(
        engine,
        site_id,
        model_name,
        finding,
        model_version=version,
        limit=settings.estimate_reference,
        earliest=True,
        with_metadata=False,
    )
    rolling = _snapshot(
        settings, stream, finding, "rolling", read.rolling, read.recent, read.expired
    )
    rolling = dataclasses.replace(
        rolling,
        estimate=_estimate(
            engine, settings, stream, finding, rolling.metrics.threshold, rolling.metrics, reference
        ),
    )
    cumulative = _snapshot(
        settings, stream, finding, "cumulative", read.cumulative, read.predicted, read.expired
    )
    if rolling.window_start is not None and rolling.window_end is not None:
        _check_rules(engine, settings, rolling, reference, read.cumulative.n)
    return [rolling, cumulative]


@dataclass(frozen=True, slots=True)
class _Read:
    """What one refresh reads of one (site, model version, finding)."""

    cumulative: SummaryWindow
    rolling: SummaryWindow
    predicted: int
    recent: int
    """Predictions over the rolling window's days."""
    expired: int


def _read(
    engine: Engine, settings: PerformanceSettings, stream: tuple[str, str, str], finding: str
) -> _Read:
    site_id, model_name, version = stream
    with engine.connect() as connection:
        rolling = read_window(
            connection,
            model_name,
            version,
            finding,
            site_id=site_id,
            rolling=settings.rolling_window,
        )
        return _Read(
            cumulative=read_window(connection, model_name, version, finding, site_id=site_id),
            rolling=rolling,
            predicted=predicted(connection, model_name, version, site_id=site_id),
            recent=predicted(
                connection, model_name, version, site_id=site_id, buckets=rolling.buckets
            ),
            expired=_expired(connection, site_id, model_name),
        )


def _expired(connection: Connection, site_id: str, model_name: str) -> int:
    """Labels of the site and model that expired without a prediction (all time); reads the
    expired rows only (``ix_labels_current_expiry``)."""
    labels = CurrentLabelRow
    count = connection.scalar(
        select(func.count())
        .select_from(labels)
        .where(
            labels.site_id == site_id,
            labels.expired_at.is_not(None),
            labels.model_name == model_name,
        )
    )
    return int(count or 0)


def _check_rules(
    engine: Engine,
    settings: PerformanceSettings,
    rolling: Snapshot,
    reference: JoinedSample,
    labelled_total: int,
) -> None:
    """The performance alert rules on the rolling window, against the version's reference
    (its earliest labelled predictions at the site, the same the estimate is calibrated on)."""
    assert rolling.window_start is not None and rolling.window_end is not None
    key = StreamKey(rolling.site_id, rolling.model_name, rolling.model_version)
    threshold = rolling.metrics.threshold
    facts = WindowFacts(
        key=key,
        finding=rolling.finding,
        rolling=rolling.metrics,
        reference=binary_metrics(reference.labels, reference.scores, threshold, settings.metrics)
        if len(reference)
        else None,
        threshold=threshold,
        labelled=labelled_total,
        window_start=rolling.window_start,
        window_end=rolling.window_end,
    )
    outcome = evaluate(engine, settings, facts)
    for alert in outcome.alerts:
        metrics.ALERTS_OPENED.labels(key.site_id, key.model_name, alert.detector).inc()
    if outcome.alerts:
        log.info("performance alerts raised", site_id=key.site_id, count=len(outcome.alerts))


def _snapshot(
    settings: PerformanceSettings,
    stream: tuple[str, str, str],
    finding: str,
    window: Window,
    merged: SummaryWindow,
    predicted_in_window: int,
    expired: int,
) -> Snapshot:
    """One window's snapshot from its merged statistics."""
    site_id, model_name, version = stream
    config = settings.metrics
    summary = merged.summary or PerformanceSummary(
        SummaryKey(model_name, version, finding, site_id), layout_for(NO_THRESHOLD)
    )
    return Snapshot(
        site_id=site_id,
        model_name=model_name,
        model_version=version,
        finding=finding,
        window=window,
        predicted=predicted_in_window,
        labelled=merged.n,
        expired_labels=expired,
        label_delay_hours=merged.delays.summary(),
        metrics=summary_metrics(summary, config),
        subgroups=_subgroups(settings, merged),
        threshold_source=merged.threshold_source,
        window_start=merged.first_at,
        window_end=merged.last_at,
    )


def _subgroups(settings: PerformanceSettings, merged: SummaryWindow) -> list[dict[str, Any]]:
    """Per configured field, its values in sorted order and the missing value last."""
    config = settings.metrics
    entries = []
    for name in settings.subgroup_fields:
        values = sorted(
            (value for field_name, value in merged.subgroups if field_name == name),
            key=lambda value: (value == "", value),
        )
        for value in values:
            summary = merged.subgroups[(name, value)]
            shown = value or None
            who = f"{name} missing" if shown is None else f"{name}={shown}"
            too_few = summary.n < config.min_subgroup_count
            entries.append(
                {
                    "field": name,
                    "value": shown,
                    "n": summary.n,
                    "metrics": None
                    if too_few
                    else dataclasses.asdict(summary_metrics(summary, config)),
                    "unavailable_reason": (
                        f"{who}: {summary.n} cases, at least {config.min_subgroup_count} needed"
                        if too_few
                        else None
                    ),
                }
            )
    return entries


def _estimate(
    engine: Engine,
    settings: PerformanceSettings,
    stream: tuple[str, str, str],
    finding: str,
    threshold: float,
    realised: BinaryMetrics,
    reference: JoinedSample,
) -> dict[str, Any]:
    """CBPE on the latest predictions (labelled or not), calibrated on ``reference`` (the
    version's earliest labelled predictions), checked against the labels that have arrived for
    that window."""
    site_id, model_name, version = stream
    try:
        calibration = fit_calibration(reference.labels, reference.scores, settings.estimate)
    except InsufficientReferenceError as exc:
        return {"unavailable": str(exc)}
    scores, oldest = recent_predictions(
        engine, site_id, model_name, finding, model_version=version, limit=settings.rolling_window
    )
    if oldest is None:
        return {"unavailable": "no predictions yet"}
    labelled = joined_sample(
        engine, site_id, model_name, finding, model_version=version, since=oldest
    )
    estimate = estimate_performance(
        scores, threshold, calibration, settings.estimate, labelled.scores, labelled.labels
    )
    comparison = compare(
        estimate,
        *(
            m.estimate if m else None
            for m in (realised.sensitivity, realised.specificity, realised.auroc)
        ),
    )
    return {
        **dataclasses.asdict(estimate),
        "comparison": dataclasses.asdict(comparison),
        "labelled_in_window": len(labelled),
    }


def _store(
    engine: Engine, snapshots: list[Snapshot], settings: PerformanceSettings, now: datetime
) -> None:
    if not snapshots:
        return
    rows = [
        {
            "site_id": s.site_id,
            "model_name": s.model_name,
            "model_version": s.model_version,
            "finding": s.finding,
            "window": s.window,
            "computed_at": now,
            "predicted": s.predicted,
            "labelled": s.labelled,
            "expired_labels": s.expired_labels,
            "label_delay_hours": s.label_delay_hours,
            "metrics": {**dataclasses.asdict(s.metrics), "threshold_source": s.threshold_source},
            "subgroups": s.subgroups,
            "estimate": s.estimate,
            "config_fingerprint": settings.metrics.fingerprint(),
        }
        for s in snapshots
    ]
    with engine.begin() as connection:
        connection.execute(PerformanceSnapshotRow.__table__.insert(), rows)  # type: ignore[attr-defined]


def latest_snapshots(
    engine: Engine, *, site_id: str | None = None, model_name: str | None = None
) -> list[PerformanceSnapshotRow]:
    """The newest snapshot per (site, model, version, finding, window), filtered."""
    row = PerformanceSnapshotRow
    conditions = []
    if site_id is not None:
        conditions.append(row.site_id == site_id)
    if model_name is not None:
        conditions.append(row.model_name == model_name)
    newest = (
        select(func.max(row.id))
        .where(*conditions)
        .group_by(row.site_id, row.model_name, row.model_version, row.finding, row.window)
    )
    with engine.connect() as connection:
        result = connection.execute(
            select(row)
            .where(row.id.in_(newest))
            .order_by(row.site_id, row.model_name, row.finding, row.window)
        )
        return [PerformanceSnapshotRow(**r._mapping) for r in result]


def _export(snapshot: Snapshot) -> None:
    labels = (
        snapshot.site_id,
        snapshot.model_name,
        snapshot.model_version,
        snapshot.finding,
        snapshot.window,
    )
    values = {
        "auroc": snapshot.metrics.auroc,
        "sensitivity": snapshot.metrics.sensitivity,
        "specificity": snapshot.metrics.specificity,
    }
    for name, interval in values.items():
        gauge = metrics.PERFORMANCE.labels(*labels, name)
        gauge.set(interval.estimate if interval is not None else float("nan"))
        _export_bounds((*labels, name), interval)
    estimate = snapshot.estimate or {}
    for name in ("auroc", "sensitivity", "specificity"):
        if snapshot.window == "rolling" and "unavailable" not in estimate and estimate:
            value = estimate.get(name)
            metrics.PERFORMANCE.labels(*labels, f"{name}_estimated").set(
                float("nan") if value is None else value
            )
    ece = snapshot.metrics.ece
    metrics.PERFORMANCE.labels(*labels, "ece").set(ece if ece is not None else float("nan"))
    share = snapshot.labelled / snapshot.predicted if snapshot.predicted else float("nan")
    metrics.PERFORMANCE.labels(*labels, "label_completeness").set(share)


def _export_bounds(labels: tuple[str, ...], interval: Interval | None) -> None:
    """The interval's bounds as their own series; none (removed) when there is no interval."""
    for gauge, bound in (
        (metrics.PERFORMANCE_LOWER, interval.lower if interval else None),
        (metrics.PERFORMANCE_UPPER, interval.upper if interval else None),
    ):
        if bound is not None:
            gauge.labels(*labels).set(bound)
            continue
        with contextlib.suppress(KeyError):  # never had one
            gauge.remove(*labels)
