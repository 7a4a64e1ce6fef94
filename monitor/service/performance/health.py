"""The health score of each stream from what is stored: drift checks, learned moments, labels.

For a (site, model, version) stream (``monitor.performance.health`` is the calculation):

1. the learned chunk moments of each window detector come from the stream's saved state
   (``drift_streams.state``, :func:`monitor.drift.state.stored_learned`);
2. its latest ``max_windows`` window checks (``drift_checks``) are grouped by window, one
   effect per detector;
3. each window's realised AUROC (and DeLong variance) comes from the labelled predictions whose
   prediction time lies in the window, for the finding with most labels; windows with fewer
   than ``min_cases_per_class`` positives or negatives have none;
4. the latest window is scored with weights learned from the labelled windows.

Nothing is stored: the API computes it on request, the performance refresh job computes it for
every stream and sets the gauges, whose history is the time series the dashboard plots.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import structlog
from sqlalchemy import Engine, func, select

from monitor.drift.calibration import OVERALL
from monitor.drift.state import StateFormatError, stored_learned
from monitor.performance._auroc import delong
from monitor.performance.health import (
    HealthConfig,
    HealthScore,
    LabelledWindow,
    Moments,
    standardise,
)
from monitor.performance.health import score as score_window
from monitor.service.db import as_utc
from monitor.service.models import CurrentLabelRow, DriftCheckRow, DriftStreamRow
from monitor.service.performance.labels import JoinedSample, joined_sample

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Window:
    """One checked window of a stream: its span and each detector's effect."""

    window_start: datetime
    window_end: datetime
    n_window: int
    effects: dict[str, float]


@dataclass(frozen=True, slots=True)
class StreamHealth:
    site_id: str
    model_name: str
    model_version: str
    finding: str | None
    window: Window
    score: HealthScore
    windows: int
    learned_through: datetime | None
    """End of the latest labelled window the weights were learned from (None: defaults)."""


def moments_of(blob: bytes) -> dict[str, Moments]:
    """Each detector's overall chunk moments from a saved stream state."""
    try:
        learned = stored_learned(blob)
    except StateFormatError:
        return {}
    found = {}
    for detector, thresholds in learned.items():
        overall = thresholds.for_feature(OVERALL)
        if overall is not None:
            found[detector] = Moments(overall.mean, overall.sd)
    return found


def windows_of(checks: list[DriftCheckRow], detectors: set[str]) -> list[Window]:
    """Checks grouped by window end, oldest first; a window counts when a detector with
    moments scored it (checks of other detectors ending with it are listed in it too)."""
    grouped: dict[datetime, list[DriftCheckRow]] = defaultdict(list)
    for check in checks:
        if check.effect_size is not None and check.skipped is None:
            grouped[as_utc(check.window_end)].append(check)
    found = []
    for end in sorted(grouped):
        rows = grouped[end]
        if not any(r.detector in detectors for r in rows):
            continue
        found.append(
            Window(
                window_start=min(as_utc(r.window_start) for r in rows),
                window_end=end,
                n_window=max(r.n_window for r in rows),
                effects={r.detector: float(r.effect_size or 0.0) for r in rows},
            )
        )
    return found


def realised_auroc(
    sample: JoinedSample, window: Window, min_per_class: int
) -> tuple[float, float] | None:
    """AUROC and DeLong variance of the labelled predictions inside ``window``."""
    first = bisect_left(sample.predicted_at, window.window_start)
    last = bisect_right(sample.predicted_at, window.window_end)
    labels, scores = sample.labels[first:last], sample.scores[first:last]
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if min(positives.size, negatives.size) < max(min_per_class, 2):
        return None
    return delong(positives, negatives)


def stream_health(
    engine: Engine, stream: DriftStreamRow, config: HealthConfig, max_windows: int = 200
) -> StreamHealth | None:
    """The latest window's health of ``stream`` (None before any scored window)."""
    moments = moments_of(bytes(stream.state))
    checks = _checks(engine, stream, set(moments), max_windows)
    windows = windows_of(checks, set(moments))[-max_windows:]
    if not windows:
        return None
    finding = _finding(engine, stream)
    history: list[LabelledWindow] = []
    learned_through = None
    if finding is not None:
        sample = joined_sample(
            engine,
            stream.site_id,
            stream.model_name,
            finding,
            model_version=stream.model_version,
            since=windows[0].window_start,
            with_metadata=False,
        )
        for window in windows:
            realised = realised_auroc(sample, window, config.min_cases_per_class)
            if realised is None:
                continue
            z = {d: v for d, v in standardise(window.effects, moments).items() if v is not None}
            history.append(LabelledWindow(z, *realised))
            learned_through = window.window_end
    latest = windows[-1]
    result = score_window(latest.effects, moments, history, config)
    return StreamHealth(
        site_id=stream.site_id,
        model_name=stream.model_name,
        model_version=stream.model_version,
        finding=finding,
        window=latest,
        score=result,
        windows=len(windows),
        learned_through=learned_through if result.weights.source == "learned" else None,
    )


def site_health(engine: Engine, site_id: str, config: HealthConfig) -> list[StreamHealth]:
    """:func:`stream_health` of every stream at ``site_id`` that has a scored window."""
    with engine.connect() as connection:
        streams = [
            DriftStreamRow(**row._mapping)
            for row in connection.execute(
                select(DriftStreamRow)
                .where(DriftStreamRow.site_id == site_id)
                .order_by(DriftStreamRow.model_name, DriftStreamRow.model_version)
            )
        ]
    found = (stream_health(engine, stream, config) for stream in streams)
    return [health for health in found if health is not None]


def all_health(engine: Engine, config: HealthConfig) -> list[StreamHealth]:
    with engine.connect() as connection:
        sites = connection.scalars(select(DriftStreamRow.site_id).distinct()).all()
    return [health for site in sorted(sites) for health in site_health(engine, site, config)]


def _checks(
    engine: Engine, stream: DriftStreamRow, detectors: set[str], max_windows: int
) -> list[DriftCheckRow]:
    """The latest ``max_windows`` windows' checks of the detectors with moments, and every
    other detector's check of the latest of those windows (listed in its components). Other
    detectors' checks are not read in bulk: the online detector checks every block."""
    table = DriftCheckRow
    stream_rows = (
        table.site_id == stream.site_id,
        table.model_name == stream.model_name,
        table.model_version == stream.model_version,
    )
    with engine.connect() as connection:
        rows = [
            table(**row._mapping)
            for row in connection.execute(
                select(table)
                .where(*stream_rows, table.detector.in_(sorted(detectors)))
                .order_by(table.window_end.desc(), table.id.desc())
                .limit(max_windows * max(len(detectors), 1))
            )
        ]
        if rows:
            rows += [
                table(**row._mapping)
                for row in connection.execute(
                    select(table).where(
                        *stream_rows,
                        table.detector.not_in(sorted(detectors)),
                        table.window_end == rows[0].window_end,
                    )
                )
            ]
    return sorted(rows, key=lambda row: (as_utc(row.window_end), row.id))


def _finding(engine: Engine, stream: DriftStreamRow) -> str | None:
    """The stream's finding with most labels in force (its realised AUROC is the target)."""
    with engine.connect() as connection:
        counts = Counter(
            dict(
                connection.execute(
                    select(CurrentLabelRow.finding, func.count())
                    .where(
                        CurrentLabelRow.site_id == stream.site_id,
                        CurrentLabelRow.model_name == stream.model_name,
                    )
                    .group_by(CurrentLabelRow.finding)
                ).all()
            )
        )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[0][0] if ranked else None


def export_gauges(found: list[StreamHealth]) -> None:
    """Set the health gauges of each stream (NaN where no score could be computed)."""
    from monitor.service import metrics

    for health in found:
        labels = (health.site_id, health.model_name, health.model_version)
        for gauge, value in (
            (metrics.HEALTH_SCORE, health.score.health),
            (metrics.HEALTH_LOWER, health.score.lower),
            (metrics.HEALTH_UPPER, health.score.upper),
        ):
            gauge.labels(*labels).set(np.nan if value is None else value)
        metrics.HEALTH_WEIGHTS_LEARNED.labels(*labels).set(
            1.0 if health.score.weights.source == "learned" else 0.0
        )
