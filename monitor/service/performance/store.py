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
``rolling_window`` predictions. ``maintenance.verify`` compares the statistics with the raw rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, Engine, func, select, tuple_

from monitor.drift.alerts import StreamKey
from monitor.performance.estimate import (
    InsufficientReferenceError,
    compare,
    estimate_performance,
    fit_calibration,
)
from monitor.performance.metrics import (
    BinaryMetrics,
    Interval,
    PerformanceConfig,
    binary_metrics,
)
from monitor.performance.sufficient import PerformanceSummary, SummaryKey, summaries_metrics
from monitor.service import metrics
from monitor.service.db import chunked
from monitor.service.models import CurrentLabelRow, PerformanceSnapshotRow
from monitor.service.performance.alerts import WindowFacts, evaluate
from monitor.service.performance.raw import (
    LabelledScores,
    RecentWindow,
    earliest_labelled,
    recent_windows,
)
from monitor.service.performance.summaries import NO_THRESHOLD, layout_for
from monitor.service.performance.windows import Window as SummaryWindow
from monitor.service.performance.windows import pooled, read_streams, stream_marks
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
    (``windows.stream_marks``). A refresh recomputes a stream only when its marks changed
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

    The streams to recompute are read on one connection (their statistics in a few queries
    per 200 streams, then the bounded raw reads in one statement each per 200), their metrics
    computed in one vectorised call, and their rules checked together in one transaction.
    Python's cyclic garbage collector is paused meanwhile (:func:`_collector_paused`).
    """
    with _collector_paused():
        return _refresh(engine, settings, now or datetime.now(UTC), cache)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, then on again if it was.

    A full refresh builds some 100,000 container objects (snapshots, their subgroups' metrics)
    that live until they are stored; that many survivors trigger full collections, each of
    which walks every object of the imported libraries (about 450,000): a fifth of the
    refresh's CPU (docs/benchmarks.md, issue 21 item 4). The objects are freed by reference
    counting when the refresh ends, so pausing the collector leaks nothing; the next automatic
    collection runs as usual. Process-wide while it lasts (about a second).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _refresh(
    engine: Engine, settings: PerformanceSettings, now: datetime, cache: RefreshCache | None
) -> list[Snapshot]:
    """:func:`refresh`. The bounded raw reads, mostly the database's work, run on a second
    connection in a thread while this one reads and merges the statistics and computes the
    metrics of the sites' and the fleet's windows, mostly Python's: on two cores the two
    overlap. The estimates and the rules, which need the raw reads, come last."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        with engine.connect() as connection:
            marks = stream_marks(connection)
            kept = {
                key: entry
                for key, mark in marks.items()
                if cache is not None and (entry := cache.streams.get(key)) and entry[0] == mark
            }
            stale = sorted(key for key in marks if key not in kept)
            raws = reader.submit(_raw_all, engine, settings, stale)
            reads = _read_all(connection, settings, stale)
        site_metrics = _snapshots(settings, _site_windows(reads))
        every_read = {key: kept[key][1] if key in kept else reads[key] for key in sorted(marks)}
        fleet = _snapshots(settings, _fleet_windows(every_read))
        computed = _site_snapshots(engine, settings, reads, site_metrics, raws.result())
    snapshots = []
    for key, read in every_read.items():
        if key in kept:
            snapshots += kept[key][2]
        else:
            snapshots += computed[key]
            if cache is not None:
                cache.streams[key] = (marks[key], read, computed[key])
    snapshots += fleet
    _store(engine, snapshots, settings, now)
    for snapshot in snapshots:
        _export(snapshot)
    return snapshots


StreamFinding = tuple[tuple[str, str, str], str]
"""((site, model, version), finding): how the tracker keys a stream."""


def _fleet_windows(reads: dict[StreamFinding, _Read]) -> list[_Window]:
    """Per model version and finding, the rolling and cumulative windows of all its sites
    pooled (``site_id`` :data:`FLEET`), in (model, version, finding) order."""
    sites: dict[tuple[str, str, str], list[_Read]] = {}
    for ((_, model_name, version), finding), read in reads.items():
        sites.setdefault((model_name, version, finding), []).append(read)
    windows = []
    for (model_name, version, finding), site_reads in sorted(sites.items()):
        stream = (FLEET, model_name, version)
        expired = sum(r.expired for r in site_reads)
        rolling = pooled([r.rolling for r in site_reads])
        cumulative = pooled([r.cumulative for r in site_reads])
        predicted = sum(r.predicted for r in site_reads)
        windows += [
            _Window(
                stream, finding, "rolling", rolling, sum(r.recent for r in site_reads), expired
            ),
            _Window(stream, finding, "cumulative", cumulative, predicted, expired),
        ]
    return windows


def _site_windows(reads: dict[StreamFinding, _Read]) -> list[_Window]:
    """The rolling and cumulative window of each site's stream, in ``reads``' order."""
    return [
        window
        for (stream, finding), read in reads.items()
        for window in (
            _Window(stream, finding, "rolling", read.rolling, read.recent, read.expired),
            _Window(stream, finding, "cumulative", read.cumulative, read.predicted, read.expired),
        )
    ]


def _site_snapshots(
    engine: Engine,
    settings: PerformanceSettings,
    reads: dict[StreamFinding, _Read],
    snapshots: list[Snapshot],
    raws: dict[StreamFinding, _Raw],
) -> dict[StreamFinding, list[Snapshot]]:
    """The rolling and cumulative snapshots of each site's stream (``snapshots``, from
    :func:`_site_windows`) with the rolling one's estimate; the rules checked (all streams in
    one transaction)."""
    keys = list(reads)
    computed: dict[StreamFinding, list[Snapshot]] = {}
    for index, key in enumerate(keys):
        rolling, cumulative = snapshots[2 * index : 2 * index + 2]
        raw = raws[key]
        estimate = _estimate(settings, rolling.metrics, raw.reference, raw.recent)
        computed[key] = [dataclasses.replace(rolling, estimate=estimate), cumulative]
    checked = [
        (StreamKey(*key[0]), _window_facts(settings, rolling, raws[key].reference, reads[key]))
        for key, (rolling, _) in computed.items()
        if rolling.window_start is not None and rolling.window_end is not None
    ]
    with engine.begin() as connection:
        results = evaluate(connection, settings, [facts for _, facts in checked])
    outcomes = [
        (stream_key, outcome) for (stream_key, _), outcome in zip(checked, results, strict=True)
    ]
    for stream_key, outcome in outcomes:
        for alert in outcome.alerts:
            metrics.ALERTS_OPENED.labels(
                stream_key.site_id, stream_key.model_name, alert.detector
            ).inc()
        if outcome.alerts:
            log.info(
                "performance alerts raised", site_id=stream_key.site_id, count=len(outcome.alerts)
            )
    return computed


@dataclass(frozen=True, slots=True)
class _Read:
    """What one refresh reads of one (site, model version, finding)'s statistics."""

    cumulative: SummaryWindow
    rolling: SummaryWindow
    predicted: int
    recent: int
    """Predictions over the rolling window's days."""
    expired: int


@dataclass(frozen=True, slots=True)
class _Raw:
    """The bounded raw reads of one stream: the version's earliest labelled predictions at
    the site (what the estimate is calibrated on and the rules compare with) and its latest
    predictions (what the estimate estimates)."""

    reference: LabelledScores
    recent: RecentWindow


def _read_all(
    connection: Connection, settings: PerformanceSettings, keys: list[StreamFinding]
) -> dict[StreamFinding, _Read]:
    streams = {key: (*key[0], key[1]) for key in keys}
    windows = read_streams(connection, list(streams.values()), settings.rolling_window)
    expired = _expired(connection, sorted({key[0][:2] for key in keys}))
    return {
        key: _Read(
            cumulative=windows[stream].cumulative,
            rolling=windows[stream].rolling,
            predicted=windows[stream].predicted,
            recent=windows[stream].recent,
            expired=expired.get(key[0][:2], 0),
        )
        for key, stream in streams.items()
    }


def _raw_all(
    engine: Engine, settings: PerformanceSettings, keys: list[StreamFinding]
) -> dict[StreamFinding, _Raw]:
    streams = {key: (*key[0], key[1]) for key in keys}
    with engine.connect() as connection:
        references = earliest_labelled(
            connection, list(streams.values()), settings.estimate_reference
        )
        recent = recent_windows(connection, list(streams.values()), settings.rolling_window)
    return {key: _Raw(references[stream], recent[stream]) for key, stream in streams.items()}


def _expired(connection: Connection, sites: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Per (site, model): labels that expired without a prediction (all time); reads the
    expired rows only (``ix_labels_current_expiry``)."""
    labels = CurrentLabelRow
    counts: dict[tuple[str, str], int] = {}
    for chunk in chunked(sites):
        rows = connection.execute(
            select(labels.site_id, labels.model_name, func.count())
            .where(
                labels.site_id.in_(sorted({site for site, _ in chunk})),
                labels.expired_at.is_not(None),
                tuple_(labels.site_id, labels.model_name).in_(chunk),
            )
            .group_by(labels.site_id, labels.model_name)
        )
        counts.update({(site, model): int(n) for site, model, n in rows})
    return counts


def _window_facts(
    settings: PerformanceSettings, rolling: Snapshot, reference: LabelledScores, read: _Read
) -> WindowFacts:
    """What the performance alert rules judge: the rolling window, against the version's
    reference (its earliest labelled predictions at the site, the same the estimate is
    calibrated on)."""
    assert rolling.window_start is not None and rolling.window_end is not None
    threshold = rolling.metrics.threshold

    def reference_metrics() -> BinaryMetrics | None:
        if not len(reference):
            return None
        return binary_metrics(reference.labels, reference.scores, threshold, settings.metrics)

    return WindowFacts(
        key=StreamKey(rolling.site_id, rolling.model_name, rolling.model_version),
        finding=rolling.finding,
        rolling=rolling.metrics,
        reference_metrics=reference_metrics,
        threshold=threshold,
        labelled=read.cumulative.n,
        window_start=rolling.window_start,
        window_end=rolling.window_end,
    )


@dataclass(frozen=True, slots=True)
class _Window:
    """One snapshot to compute: a window's merged statistics and its counts."""

    stream: tuple[str, str, str]
    finding: str
    window: Window
    merged: SummaryWindow
    predicted: int
    expired: int


def _snapshots(settings: PerformanceSettings, windows: list[_Window]) -> list[Snapshot]:
    """The windows' snapshots from their merged statistics: the metrics of every window and
    subgroup value computed in one ``summaries_metrics`` call (per window, its fixed costs
    were most of a refresh)."""
    config = settings.metrics
    summaries: list[PerformanceSummary] = []
    plans = []
    for spec in windows:
        site_id, model_name, version = spec.stream
        summary = spec.merged.summary or PerformanceSummary(
            SummaryKey(model_name, version, spec.finding, site_id), layout_for(NO_THRESHOLD)
        )
        shown = _shown_subgroups(settings, spec.merged)
        plans.append((spec, shown, len(summaries)))
        summaries += [summary, *(s for _, _, s in shown if s.n >= config.min_subgroup_count)]
    computed = summaries_metrics(summaries, config)
    return [
        Snapshot(
            site_id=spec.stream[0],
            model_name=spec.stream[1],
            model_version=spec.stream[2],
            finding=spec.finding,
            window=spec.window,
            predicted=spec.predicted,
            labelled=spec.merged.n,
            expired_labels=spec.expired,
            label_delay_hours=spec.merged.delays.summary(),
            metrics=computed[start],
            subgroups=_subgroups(config, shown, iter(computed[start + 1 :])),
            threshold_source=spec.merged.threshold_source,
            window_start=spec.merged.first_at,
            window_end=spec.merged.last_at,
        )
        for spec, shown, start in plans
    ]


def _shown_subgroups(
    settings: PerformanceSettings, merged: SummaryWindow
) -> list[tuple[str, str, PerformanceSummary]]:
    """Per configured field, its values in sorted order and the missing value last."""
    shown = []
    for name in settings.subgroup_fields:
        values = sorted(
            (value for field_name, value in merged.subgroups if field_name == name),
            key=lambda value: (value == "", value),
        )
        shown += [(name, value, merged.subgroups[(name, value)]) for value in values]
    return shown


def _subgroups(
    config: PerformanceConfig,
    shown: list[tuple[str, str, PerformanceSummary]],
    computed: Iterator[BinaryMetrics],
) -> list[dict[str, Any]]:
    """The snapshot's subgroup entries; ``computed`` holds the metrics of the values with
    at least ``min_subgroup_count`` cases, in order."""
    entries = []
    for name, value, summary in shown:
        shown_value = value or None
        who = f"{name} missing" if shown_value is None else f"{name}={shown_value}"
        too_few = summary.n < config.min_subgroup_count
        entries.append(
            {
                "field": name,
                "value": shown_value,
                "n": summary.n,
                "metrics": None if too_few else next(computed).as_dict(),
                "unavailable_reason": (
                    f"{who}: {summary.n} cases, at least {config.min_subgroup_count} needed"
                    if too_few
                    else None
                ),
            }
        )
    return entries


def _estimate(
    settings: PerformanceSettings,
    realised: BinaryMetrics,
    reference: LabelledScores,
    recent: RecentWindow,
) -> dict[str, Any]:
    """CBPE on the latest predictions (labelled or not), calibrated on ``reference`` (the
    version's earliest labelled predictions), checked against the labels that have arrived for
    that window."""
    try:
        calibration = fit_calibration(reference.labels, reference.scores, settings.estimate)
    except InsufficientReferenceError as exc:
        return {"unavailable": str(exc)}
    if recent.oldest is None:
        return {"unavailable": "no predictions yet"}
    labelled = recent.labelled
    estimate = estimate_performance(
        recent.scores,
        realised.threshold,
        calibration,
        settings.estimate,
        labelled.scores,
        labelled.labels,
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
            "metrics": {**s.metrics.as_dict(), "threshold_source": s.threshold_source},
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
