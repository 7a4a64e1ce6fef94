"""What the engine reports: scored checks, alerts, and updates to open alerts, in words too."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from monitor.drift.base import DriftResult, FeatureAttribution
from monitor.drift.directions import DIRECTION_PREFIX
from monitor.drift.severity import Severity

ALERT_NAMESPACE = uuid.UUID("5f0b6a43-7f55-4c2e-9a58-5f4f0e0d5a11")
"""Alert ids are uuid5 under this namespace of (stream, detector, episode number): replaying the
same events (a restart, a backtest) yields the same ids, so storing them is idempotent."""

DETECTOR_LABELS = {
    "mmd": "pixel statistics (MMD)",
    "ks": "numeric DICOM metadata (KS)",
    "chi2": "categorical DICOM metadata (chi-square)",
    "score_ks": "model output scores (KS)",
    "missingness": "missing fields (Fisher)",
    "online_hotelling": "pixel statistics, per event (online)",
    "embedding_mmd": "image content in the model's embedding (MMD)",
}
_FEATURES_NAMED = 3


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """One monitored stream: a model version's events at one site."""

    site_id: str
    model_name: str
    model_version: str

    def __str__(self) -> str:
        return f"{self.site_id}/{self.model_name}@{self.model_version}"


def to_datetime(posix_seconds: float) -> datetime:
    return datetime.fromtimestamp(posix_seconds, UTC)


@dataclass(frozen=True, slots=True)
class Check:
    """One scored window (or online block) of one detector: the result or why there is none."""

    key: StreamKey
    detector: str
    window_start: datetime
    window_end: datetime
    n_window: int
    result: DriftResult | None
    skipped: str | None = None
    severity: Severity | None = None
    """For a drifting check: how serious (``monitor.drift.severity``); None when quiet."""


@dataclass(frozen=True, slots=True)
class Alert:
    """A new drift episode, explained: which detector, which features, how big, since when."""

    alert_id: uuid.UUID
    key: StreamKey
    detector: str
    features: tuple[str, ...]
    occurred_at: datetime
    """Event time of the event whose check opened the episode."""
    since: datetime
    """Start of the first window of the drifting streak that opened the episode."""
    window_start: datetime
    window_end: datetime
    statistic: float
    p_value: float | None
    effect_size: float
    effect_size_name: str
    explanation: str
    config_fingerprint: str
    reference_id: uuid.UUID
    severity: Severity = Severity.WARNING
    """Of the check that opened the episode; later checks can raise it (``AlertUpdate``)."""

    def to_json(self) -> dict[str, Any]:
        """The alert as published on ``radsentry.alerts`` and written by the backtest."""
        return {
            "schema": "drift-alert/v1",
            "alert_id": str(self.alert_id),
            "site_id": self.key.site_id,
            "model_name": self.key.model_name,
            "model_version": self.key.model_version,
            "detector": self.detector,
            "features": list(self.features),
            "occurred_at": self.occurred_at.isoformat(),
            "since": self.since.isoformat(),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "statistic": self.statistic,
            "p_value": self.p_value,
            "effect_size": self.effect_size,
            "effect_size_name": self.effect_size_name,
            "explanation": self.explanation,
            "config_fingerprint": self.config_fingerprint,
            "reference_id": str(self.reference_id),
            "severity": self.severity.value,
        }


@dataclass(frozen=True, slots=True)
class AlertUpdate:
    """Later news on an open episode: drift seen again, drift sustained long enough to ask for a
    decision, or drift no longer seen."""

    alert_id: uuid.UUID
    kind: Literal["continued", "sustained", "ended"]
    at: datetime
    """Event time of the check."""
    effect_size: float | None = None
    reason: str | None = None
    severity: Severity | None = None
    """For ``continued``: the severity of the check (the alert keeps the highest seen)."""


def alert_id_for(key: StreamKey, detector: str, episode: int) -> uuid.UUID:
    return uuid.uuid5(ALERT_NAMESPACE, f"{key}|{detector}|{episode}")


def drifting_features(result: DriftResult, min_effect_size: float) -> tuple[str, ...]:
    """The features behind a drift result.

    For per-feature tests, those significant after correction with at least the effect floor;
    for multivariate results (no per-feature p-values), the largest contributors.
    """
    tested = [a for a in result.attributions if a.p_value is not None]
    if tested and result.threshold is not None:
        threshold = result.threshold
        return tuple(
            a.feature
            for a in tested
            if a.p_value is not None and a.p_value <= threshold and a.effect_size >= min_effect_size
        )
    return tuple(a.feature for a in _ranked(result.attributions)[:_FEATURES_NAMED])


def explain(key: StreamKey, check: Check, result: DriftResult, since: datetime) -> str:
    """One paragraph for a site manager."""
    label = DETECTOR_LABELS.get(check.detector, check.detector)
    details = "; ".join(_describe(a) for a in _leading(result.attributions))
    p_value = f", p {result.p_value:.2g}" if result.p_value is not None else ""
    return (
        f"{label} changed at {key.site_id} for {key.model_name} {key.model_version}: "
        f"{details}. {result.effect_size_name} {result.effect_size:.3g}{p_value}; "
        f"{check.n_window} events from {check.window_start:%Y-%m-%d %H:%M} to "
        f"{check.window_end:%Y-%m-%d %H:%M} UTC vs {result.n_reference} reference events; "
        f"drifting since {since:%Y-%m-%d %H:%M} UTC."
    )


def _leading(attributions: tuple[FeatureAttribution, ...]) -> list[FeatureAttribution]:
    if any(a.p_value is not None for a in attributions):
        return [a for a in attributions if a.p_value is not None][:_FEATURES_NAMED]
    return _ranked(attributions)[:_FEATURES_NAMED]


def _ranked(attributions: tuple[FeatureAttribution, ...]) -> list[FeatureAttribution]:
    """A multivariate result's attributions, largest effect first; a known direction the shift
    points to (``monitor.drift.directions``) leads whatever its size."""
    return sorted(
        attributions,
        key=lambda a: (not a.feature.startswith(DIRECTION_PREFIX), -abs(a.effect_size)),
    )


def _describe(attribution: FeatureAttribution) -> str:
    if attribution.explanation:
        return attribution.explanation
    return f"{attribution.feature}: shift {attribution.effect_size:+.2f} sd"
