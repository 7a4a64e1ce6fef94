"""Performance tracking: metrics of every site, model version and finding.

``refresh`` recomputes, for each monitored stream (``drift_streams``) and each finding with
labels, two windows of labelled predictions (``performance.labels.joined_sample``):

* ``rolling``: the latest ``rolling_window`` labelled predictions of the model version;
* ``cumulative``: all labelled predictions of the model version;

with :func:`monitor.performance.metrics.binary_metrics` (AUROC with DeLong CI, sensitivity,
specificity, PPV, NPV with Wilson intervals, calibration) and
:func:`monitor.performance.subgroups.subgroup_metrics` on the configured metadata fields, plus
label completeness and delays. Each result is stored as a snapshot row (history for
dashboards) and exported as Prometheus gauges. The operating threshold is the one the inference
events carry (the latest); events without one are scored at 0.5, and the snapshot says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import structlog
from sqlalchemy import Engine, func, select

from monitor.drift.alerts import StreamKey
from monitor.performance.estimate import (
    InsufficientReferenceError,
    compare,
    estimate_performance,
    fit_calibration,
)
from monitor.performance.metrics import BinaryMetrics, Interval, binary_metrics
from monitor.performance.subgroups import subgroup_metrics
from monitor.service import metrics
from monitor.service.models import CurrentLabelRow, DriftStreamRow, PerformanceSnapshotRow
from monitor.service.performance.alerts import WindowFacts, evaluate
from monitor.service.performance.labels import (
    JoinedSample,
    LabelCompleteness,
    joined_sample,
    label_completeness,
    recent_predictions,
)
from monitor.service.settings import PerformanceSettings

log = structlog.get_logger(__name__)

Window = Literal["rolling", "cumulative"]
DEFAULT_THRESHOLD = 0.5


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


def refresh(
    engine: Engine, settings: PerformanceSettings, now: datetime | None = None
) -> list[Snapshot]:
    """Recompute and store every snapshot; returns them (also exported as metrics)."""
    now = now or datetime.now(UTC)
    snapshots = []
    for stream, finding in _tracked(engine):
        site_id, model_name, version = stream
        # Each sample is read once: the cumulative one also gives the version's completeness,
        # the reference serves both the estimate's calibration and the alert rules.
        cumulative = joined_sample(engine, site_id, model_name, finding, model_version=version)
        reference = joined_sample(
            engine,
            site_id,
            model_name,
            finding,
            model_version=version,
            limit=settings.estimate_reference,
            earliest=True,
        )
        completeness = label_completeness(
            engine, site_id, model_name, finding, model_version=version, sample=cumulative
        )
        rolling = _snapshot(engine, settings, stream, finding, "rolling", completeness, reference)
        snapshots += [
            rolling,
            _snapshot(
                engine,
                settings,
                stream,
                finding,
                "cumulative",
                completeness,
                reference,
                sample=cumulative,
            ),
        ]
        if rolling.window_start is not None and rolling.window_end is not None:
            _check_rules(engine, settings, rolling, reference, completeness.labelled)
    _store(engine, snapshots, settings, now)
    for snapshot in snapshots:
        _export(snapshot)
    return snapshots


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


def _tracked(engine: Engine) -> list[tuple[tuple[str, str, str], str]]:
    """(site, model, version) streams and the findings labelled for them."""
    with engine.connect() as connection:
        streams = connection.execute(
            select(DriftStreamRow.site_id, DriftStreamRow.model_name, DriftStreamRow.model_version)
        ).all()
        findings = connection.execute(
            select(
                CurrentLabelRow.site_id, CurrentLabelRow.model_name, CurrentLabelRow.finding
            ).distinct()
        ).all()
    by_model: dict[tuple[str, str], list[str]] = {}
    for site_id, model_name, finding in findings:
        by_model.setdefault((site_id, model_name), []).append(finding)
    return [
        ((site_id, model_name, version), finding)
        for site_id, model_name, version in sorted(streams)
        for finding in sorted(by_model.get((site_id, model_name), []))
    ]


def _snapshot(
    engine: Engine,
    settings: PerformanceSettings,
    stream: tuple[str, str, str],
    finding: str,
    window: Window,
    completeness: LabelCompleteness,
    reference: JoinedSample,
    sample: JoinedSample | None = None,
) -> Snapshot:
    """One window's snapshot; ``sample`` when the caller has already read the window."""
    site_id, model_name, version = stream
    if sample is None:
        limit = settings.rolling_window if window == "rolling" else None
        sample = joined_sample(
            engine, site_id, model_name, finding, model_version=version, limit=limit
        )
    if window == "rolling" and len(sample):
        # The window's own completeness: predictions made over the span its cases cover.
        completeness = label_completeness(
            engine,
            site_id,
            model_name,
            finding,
            model_version=version,
            since=sample.predicted_at[0],
            until=sample.predicted_at[-1] + timedelta(microseconds=1),
        )
    threshold, source = _threshold(sample)
    config = settings.metrics
    groups = {
        name: [_text(md.get(name)) for md in sample.metadata] for name in settings.subgroup_fields
    }
    subgroups = (
        subgroup_metrics(sample.labels, sample.scores, threshold, groups, config)
        if len(sample)
        else []
    )
    realised = binary_metrics(sample.labels, sample.scores, threshold, config)
    return Snapshot(
        site_id=site_id,
        model_name=model_name,
        model_version=version,
        finding=finding,
        window=window,
        predicted=completeness.predicted,
        labelled=completeness.labelled,
        expired_labels=completeness.expired,
        label_delay_hours=completeness.delay_hours,
        metrics=realised,
        subgroups=[
            {
                "field": group.field,
                "value": group.value,
                "n": group.n,
                "metrics": dataclasses.asdict(group.metrics) if group.metrics else None,
                "unavailable_reason": group.unavailable_reason,
            }
            for group in subgroups
        ],
        threshold_source=source,
        window_start=sample.predicted_at[0] if len(sample) else None,
        window_end=sample.predicted_at[-1] if len(sample) else None,
        estimate=_estimate(engine, settings, stream, finding, threshold, realised, reference)
        if window == "rolling"
        else None,
    )


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


def _threshold(sample: JoinedSample) -> tuple[float, str]:
    known = sample.thresholds[~np.isnan(sample.thresholds)]
    if known.size:
        return float(known[-1]), "the model's operating threshold (latest event)"
    return DEFAULT_THRESHOLD, f"no threshold in the events: {DEFAULT_THRESHOLD} assumed"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


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
