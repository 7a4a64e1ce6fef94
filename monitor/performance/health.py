"""One health score per stream: every window detector's effect, standardised and combined.

**Standardising.** Each window detector's effect is put on one scale, its reference's own
chunk-to-chunk variation (``monitor.drift.calibration``): ``z = (effect - mean) / sd``, where
``mean`` and ``sd`` are the detector's overall (``"*"``) chunk moments learned with its
thresholds, clipped to ±:data:`~monitor.drift.sequential.Z_CAP`. A reference-sized window that
looks like the reference has ``z`` about 0 with spread about 1, whatever the detector. A detector
without learned moments (thresholds not learned, too short a reference, zero spread) has no
``z``: it is listed, with weight 0, and left out of the score. Detector names are not known
here: any detector the engine runs, present or future, takes part once it has moments.

**Combining.** ``drift index = sum_j w_j * z_j`` with non-negative weights summing to 1. The
weights are learned from labelled history when there is enough of it: over the windows with a
realised AUROC, non-negative least squares (intercept by centring, a ridge penalty that shrinks
towards equal weights) of the AUROC *drop* on the detectors' ``z``; a detector whose ``z``
predicts the drop gets weight, one that moves without hurting the model gets little or none.
The raw coefficients are AUROC per reference spread, so ``expected_auroc_drop`` (the drop the
window's positive ``z`` predict, against a window at the reference's level) is reported too.
With fewer than ``min_labelled_windows`` labelled windows, or when no detector
predicts the drop at all, every detector with moments weighs the same: ``default weights``,
said so in the result.

**Scale.** ``health = 100 - (100 / Z_CAP) * max(drift index, 0)``: 100 is a window at or below
the reference's usual variation, each reference spread of the weighted detectors costs 12.5
points, and 0 is every weighted detector at its cap (8 spreads). On an unchanged stream the
index is about standard normal or narrower, so health stays above about 80 (index below 1.6)
in about 95% of windows.

**Band.** Learned weights: a bootstrap over the labelled windows, each replicate also drawing
every window's AUROC from its sampling distribution (DeLong variance), refits the weights and
rescores the window; the band is the central ``confidence`` interval of those scores. Default
weights: a bootstrap over the detectors (which of them to trust), the same percentiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from monitor.drift.base import DetectorConfig
from monitor.drift.sequential import Z_CAP

WeightsSource = Literal["learned", "default"]

POINTS_PER_SPREAD: Final = 100.0 / Z_CAP
"""Health points lost per reference spread of the drift index (0 at the cap)."""


class HealthConfig(DetectorConfig):
    """How the health score learns its weights and band (``PerformanceSettings.health``)."""

    min_labelled_windows: int = Field(default=8, ge=3)
    """Fewest windows with a realised AUROC to learn weights from; fewer: default weights."""
    ridge: float = Field(default=0.1, ge=0.0)
    """Ridge penalty on the weights' differences from equal weights, relative to the labelled
    windows' mean column energy: with few windows or detectors that move together the weights
    stay near equal, instead of resting on one detector by chance."""
    n_bootstrap: int = Field(default=200, ge=20)
    confidence: float = Field(default=0.9, gt=0.5, lt=1.0)
    seed: int = 0
    min_cases_per_class: int = Field(default=5, ge=2)
    """A window has a realised AUROC only with this many positives and negatives."""


@dataclass(frozen=True, slots=True)
class Moments:
    """A detector's overall chunk effect mean and spread, learned from the reference."""

    mean: float
    sd: float


@dataclass(frozen=True, slots=True)
class LabelledWindow:
    """One past window: its detectors' ``z`` and the realised AUROC over the same studies."""

    z: Mapping[str, float]
    auroc: float
    auroc_variance: float


@dataclass(frozen=True, slots=True)
class Weights:
    """Combination weights (summing to 1 over ``weights``) and where they came from."""

    weights: Mapping[str, float]
    source: WeightsSource
    reason: str
    labelled_windows: int
    auroc_per_spread: Mapping[str, float]
    """The raw learned coefficients (AUROC drop per reference spread); empty for defaults."""


@dataclass(frozen=True, slots=True)
class Component:
    detector: str
    effect: float
    z: float | None
    weight: float
    note: str | None = None


@dataclass(frozen=True, slots=True)
class HealthScore:
    """A window's health (100 = like the reference, lower = worse) with its band."""

    health: float | None
    lower: float | None
    upper: float | None
    drift_index: float | None
    expected_auroc_drop: float | None
    components: tuple[Component, ...]
    weights: Weights


def standardise(
    effects: Mapping[str, float], moments: Mapping[str, Moments]
) -> dict[str, float | None]:
    """Each detector's ``z`` against its reference moments (None without usable moments)."""
    found: dict[str, float | None] = {}
    for detector, effect in effects.items():
        learned = moments.get(detector)
        if learned is None or not learned.sd > 0 or not np.isfinite(effect):
            found[detector] = None
            continue
        found[detector] = float(np.clip((effect - learned.mean) / learned.sd, -Z_CAP, Z_CAP))
    return found


def default_weights(detectors: Sequence[str], reason: str, labelled: int = 0) -> Weights:
    share = 1.0 / len(detectors) if detectors else 0.0
    return Weights({d: share for d in sorted(detectors)}, "default", reason, labelled, {})


def _fit(z: NDArray[np.float64], drop: NDArray[np.float64], ridge: float) -> NDArray[np.float64]:
    """Non-negative least squares of ``drop`` on ``z``, intercept removed by centring, with a
    ridge penalty on the coefficients' differences from their mean (shrinking towards equal
    weights, the default), ``ridge`` times the design's mean column energy."""
    from scipy.optimize import nnls

    centred_z, centred_drop = z - z.mean(axis=0), drop - drop.mean()
    columns = z.shape[1]
    energy = float((centred_z**2).sum()) / columns
    to_equal = np.eye(columns) - np.full((columns, columns), 1.0 / columns)
    penalty = np.sqrt(ridge * energy) * to_equal
    design = np.vstack([centred_z, penalty])
    target = np.concatenate([centred_drop, np.zeros(z.shape[1])])
    coefficients, _ = nnls(design, target)
    return np.asarray(coefficients, dtype=np.float64)


def _matrix(
    history: Sequence[LabelledWindow], detectors: Sequence[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    z = np.array([[w.z.get(d, 0.0) for d in detectors] for w in history], dtype=np.float64)
    auroc = np.array([w.auroc for w in history], dtype=np.float64)
    variance = np.array([max(w.auroc_variance, 0.0) for w in history], dtype=np.float64)
    return z, auroc, variance


def learn_weights(
    history: Sequence[LabelledWindow], detectors: Sequence[str], config: HealthConfig
) -> Weights:
    """Weights of ``detectors`` from the labelled windows (see the module docstring)."""
    detectors = sorted(detectors)
    usable = [w for w in history if np.isfinite(w.auroc)]
    if not detectors:
        return default_weights(detectors, "no detector has learned moments")
    if len(usable) < config.min_labelled_windows:
        return default_weights(
            detectors,
            f"{len(usable)} labelled windows, fewer than the {config.min_labelled_windows} "
            "needed to learn weights",
            len(usable),
        )
    z, auroc, _ = _matrix(usable, detectors)
    coefficients = _fit(z, -auroc, config.ridge)
    if not coefficients.sum() > 0:
        return default_weights(
            detectors, "no detector's z predicted a drop in realised AUROC", len(usable)
        )
    total = float(coefficients.sum())
    return Weights(
        weights={d: float(c) / total for d, c in zip(detectors, coefficients, strict=True)},
        source="learned",
        reason=f"non-negative regression of the AUROC drop on {len(usable)} windows, "
        "shrunk towards equal weights",
        labelled_windows=len(usable),
        auroc_per_spread={d: float(c) for d, c in zip(detectors, coefficients, strict=True)},
    )


def health_of(index: float | NDArray[np.float64]) -> Any:
    """The 0-100 health of a drift index (scalar or array)."""
    return np.clip(100.0 - POINTS_PER_SPREAD * np.maximum(index, 0.0), 0.0, 100.0)


def score(
    effects: Mapping[str, float],
    moments: Mapping[str, Moments],
    history: Sequence[LabelledWindow],
    config: HealthConfig,
) -> HealthScore:
    """The health of one window (its detectors' effects), weights learned from ``history``
    (past windows' ``z`` and realised AUROC, :func:`standardise` applied the same way)."""
    z = standardise(effects, moments)
    present = sorted(d for d, value in z.items() if value is not None)
    weights = learn_weights(history, present, config)
    components = tuple(
        Component(
            detector=d,
            effect=float(effects[d]),
            z=z[d],
            weight=weights.weights.get(d, 0.0),
            note=None if z[d] is not None else "no learned reference moments: not in the score",
        )
        for d in sorted(effects)
    )
    if not present:
        return HealthScore(None, None, None, None, None, components, weights)
    vector = np.array([z[d] for d in present], dtype=np.float64)
    index = float(vector @ np.array([weights.weights[d] for d in present]))
    replicates = _bootstrap(vector, present, history, weights, config)
    tail = (1.0 - config.confidence) / 2.0
    lower, upper = (float(v) for v in np.quantile(health_of(replicates), [tail, 1.0 - tail]))
    expected = None
    if weights.source == "learned":
        expected = float(sum(weights.auroc_per_spread[d] * max(z[d] or 0.0, 0.0) for d in present))
    return HealthScore(
        float(health_of(index)),
        min(lower, float(health_of(index))),
        max(upper, float(health_of(index))),
        index,
        expected,
        components,
        weights,
    )


def _bootstrap(
    vector: NDArray[np.float64],
    present: Sequence[str],
    history: Sequence[LabelledWindow],
    weights: Weights,
    config: HealthConfig,
) -> NDArray[np.float64]:
    """Drift indices of ``vector`` under resampled weights (module docstring, "Band")."""
    rng = np.random.default_rng(config.seed)
    if weights.source == "default":
        picks = rng.integers(0, len(present), size=(config.n_bootstrap, len(present)))
        return np.asarray(vector[picks].mean(axis=1), dtype=np.float64)
    usable = [w for w in history if np.isfinite(w.auroc)]
    z, auroc, variance = _matrix(usable, present)
    indices = np.empty(config.n_bootstrap)
    for replicate in range(config.n_bootstrap):
        rows = rng.integers(0, len(usable), size=len(usable))
        drawn = auroc[rows] + rng.normal(0.0, np.sqrt(variance[rows]))
        coefficients = _fit(z[rows], -drawn, config.ridge)
        total = coefficients.sum()
        share = coefficients / total if total > 0 else np.full(len(present), 1 / len(present))
        indices[replicate] = vector @ share
    return indices
