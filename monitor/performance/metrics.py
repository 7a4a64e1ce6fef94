"""Performance of a binary finding classifier on one labelled window, with intervals.

One call of :func:`binary_metrics` covers one site, model version, finding and window (rolling
or cumulative: the caller chooses the cases). Definitions, with ``y`` the labels (1 = finding
present), ``s`` the model's probability scores and ``t`` its operating threshold; a case is
*predicted positive* when ``s >= t``:

* counts ``n, positives, negatives, tp, fp, tn, fn``; prevalence ``positives / n``;
* sensitivity ``tp / positives``, specificity ``tn / negatives``, PPV ``tp / (tp + fp)``, NPV
  ``tn / (tn + fn)``, each (and the prevalence) with a Wilson score interval;
* AUROC (ties count one half) with DeLong's interval, ``AUROC +- z * sqrt(var)`` clipped to
  [0, 1] (Sun & Xu's O(n log n) algorithm), or a stratified percentile bootstrap;
* Brier score ``mean((s - y)^2)``; expected calibration error over ``ece_bins`` equal-width bins
  of [0, 1] (sum over bins of the bin's share of cases x |mean score - observed rate|); the
  reliability-diagram bins; calibration slope and intercept of the logistic recalibration
  ``logit P(y = 1) = intercept + slope * logit(s)``, scores clipped to [1e-6, 1 - 1e-6].

Every metric has a minimum count. Below it the metric is ``None`` and ``unavailable`` says why
("AUROC: 3 positive cases, at least 10 needed"): a window never gets a made-up number.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint  # type: ignore[import-untyped]

from monitor.performance._auroc import bootstrap_aurocs, delong
from monitor.performance._calibration import (
    ReliabilityBin,
    expected_calibration_error,
    logistic_recalibration,
    reliability_bins,
)
from monitor.performance.config import AurocMethod, PerformanceConfig

IntervalMethod = Literal["wilson", "delong", "bootstrap"]


class PerformanceError(Exception):
    """Base class of the performance library's errors."""


class InvalidInputError(PerformanceError, ValueError):
    """Labels, scores, threshold or subgroup values that cannot be what they claim to be."""


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with its interval at the config's confidence level."""

    estimate: float
    lower: float
    upper: float
    method: IntervalMethod


@dataclass(frozen=True, slots=True)
class ConfusionCounts:
    """Case counts of a window at the operating threshold."""

    n: int
    positives: int
    negatives: int
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    """Performance of one window. A ``None`` metric has its reason in ``unavailable``."""

    counts: ConfusionCounts
    threshold: float
    confidence_level: float
    config_fingerprint: str
    prevalence: Interval | None
    auroc: Interval | None
    sensitivity: Interval | None
    specificity: Interval | None
    ppv: Interval | None
    npv: Interval | None
    brier: float | None
    ece: float | None
    calibration_slope: float | None
    calibration_intercept: float | None
    reliability: tuple[ReliabilityBin, ...]
    """``ece_bins`` bins, empty ones included; an empty tuple when unavailable."""
    unavailable: dict[str, str]
    """Metric name (a field of this class) -> why it is not reported."""

    def as_dict(self) -> dict[str, Any]:
        """What ``dataclasses.asdict`` gives, built field by field: asdict's generic deep copy
        was a quarter of a tracker refresh (two dozen windows per site), and the records' dicts
        are written out (a refresh makes some 50,000 of them)."""
        plain = {name: getattr(self, name) for name in _METRICS_FIELDS}
        c = self.counts
        plain["counts"] = {
            "n": c.n,
            "positives": c.positives,
            "negatives": c.negatives,
            "tp": c.tp,
            "fp": c.fp,
            "tn": c.tn,
            "fn": c.fn,
        }
        for name in _INTERVAL_FIELDS:
            i = plain[name]
            plain[name] = (
                None
                if i is None
                else {
                    "estimate": i.estimate,
                    "lower": i.lower,
                    "upper": i.upper,
                    "method": i.method,
                }
            )
        plain["reliability"] = tuple(
            {
                "lower": b.lower,
                "upper": b.upper,
                "count": b.count,
                "mean_score": b.mean_score,
                "observed_rate": b.observed_rate,
            }
            for b in self.reliability
        )
        plain["unavailable"] = dict(self.unavailable)
        return plain


_METRICS_FIELDS: Final = tuple(f.name for f in fields(BinaryMetrics))
_INTERVAL_FIELDS: Final = ("prevalence", "auroc", "sensitivity", "specificity", "ppv", "npv")


def binary_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    config: PerformanceConfig | None = None,
) -> BinaryMetrics:
    """All metrics of one window: ``labels`` 0/1, ``scores`` probabilities in [0, 1].

    A case is predicted positive when its score is at least ``threshold``. An empty window is
    allowed (every metric unavailable). Raises InvalidInputError for labels other than 0/1,
    scores outside [0, 1] or not finite, lengths that differ, or a threshold outside [0, 1].
    """
    config = config or PerformanceConfig()
    positive, score = validated(labels, scores, threshold)
    counts = confusion_counts(positive, score >= threshold)
    unavailable: dict[str, str] = {}
    wilson = _wilson_intervals(counts, config, unavailable)
    slope, intercept = _recalibration(positive, score, counts, config, unavailable)
    reliability = _reliability(positive, score, counts, config, unavailable)
    return BinaryMetrics(
        counts=counts,
        threshold=float(threshold),
        confidence_level=config.confidence_level,
        config_fingerprint=config.fingerprint(),
        prevalence=wilson["prevalence"],
        auroc=_auroc(positive, score, counts, config, unavailable),
        sensitivity=wilson["sensitivity"],
        specificity=wilson["specificity"],
        ppv=wilson["ppv"],
        npv=wilson["npv"],
        brier=_brier(positive, score, counts, config, unavailable),
        ece=expected_calibration_error(reliability) if reliability else None,
        calibration_slope=slope,
        calibration_intercept=intercept,
        reliability=reliability,
        unavailable=unavailable,
    )


def validated(
    labels: ArrayLike, scores: ArrayLike, threshold: float
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Labels as booleans and scores as float64, or InvalidInputError saying what is wrong."""
    label_array = np.asarray(labels)
    score_array = np.asarray(scores, dtype=np.float64)
    if label_array.ndim != 1 or score_array.ndim != 1:
        raise InvalidInputError("labels and scores must be one-dimensional")
    if label_array.shape != score_array.shape:
        raise InvalidInputError(
            f"{label_array.size} labels but {score_array.size} scores: one of each per case"
        )
    if label_array.dtype != np.bool_ and not np.isin(label_array, (0, 1)).all():
        raise InvalidInputError("labels must be 0 (finding absent) or 1 (finding present)")
    if not np.isfinite(score_array).all() or (score_array < 0.0).any() or (score_array > 1.0).any():
        raise InvalidInputError("scores must be probabilities in [0, 1]")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must lie in [0, 1], got {threshold}")
    return label_array.astype(np.bool_), score_array


def confusion_counts(positive: NDArray[np.bool_], predicted: NDArray[np.bool_]) -> ConfusionCounts:
    """Counts of a window from its labels and its predictions at the threshold."""
    tp = int(np.count_nonzero(positive & predicted))
    positives = int(np.count_nonzero(positive))
    predicted_positive = int(np.count_nonzero(predicted))
    n = int(positive.size)
    fp = predicted_positive - tp
    fn = positives - tp
    return ConfusionCounts(
        n=n,
        positives=positives,
        negatives=n - positives,
        tp=tp,
        fp=fp,
        tn=n - positives - fp,
        fn=fn,
    )


class _Proportion(NamedTuple):
    name: str
    label: str
    successes: int
    total: int
    minimum: int
    unit: str


def _proportions(counts: ConfusionCounts, config: PerformanceConfig) -> tuple[_Proportion, ...]:
    c = counts
    return (
        _Proportion("prevalence", "prevalence", c.positives, c.n, config.min_cases, "cases"),
        _Proportion(
            "sensitivity", "sensitivity", c.tp, c.positives, config.min_positives, "positive cases"
        ),
        _Proportion(
            "specificity", "specificity", c.tn, c.negatives, config.min_negatives, "negative cases"
        ),
        _Proportion(
            "ppv", "PPV", c.tp, c.tp + c.fp, config.min_predicted, "cases predicted positive"
        ),
        _Proportion(
            "npv", "NPV", c.tn, c.tn + c.fn, config.min_predicted, "cases predicted negative"
        ),
    )


def _wilson_intervals(
    counts: ConfusionCounts, config: PerformanceConfig, unavailable: dict[str, str]
) -> dict[str, Interval | None]:
    """Prevalence, sensitivity, specificity, PPV and NPV with Wilson intervals."""
    return wilson_intervals_of([counts], config, [unavailable])[0]


def wilson_intervals_of(
    windows: Sequence[ConfusionCounts],
    config: PerformanceConfig,
    unavailable: Sequence[dict[str, str]],
) -> list[dict[str, Interval | None]]:
    """:func:`_wilson_intervals` of several windows (reasons into each one's ``unavailable``).

    One vectorised ``statsmodels`` ``proportion_confint(method="wilson")`` call for all five
    proportions of every window: the tracker computes a few dozen windows per site, and the
    call's fixed cost (input checks, the normal quantile) is most of its time.
    """
    proportions = [_proportions(counts, config) for counts in windows]
    flat = [p for five in proportions for p in five]
    if not flat:
        return []
    lower, upper = proportion_confint(
        np.array([p.successes for p in flat]),
        np.array([max(p.total, 1) for p in flat]),
        alpha=1.0 - config.confidence_level,
        method="wilson",
    )
    lower_bounds, upper_bounds = lower.tolist(), upper.tolist()
    results = []
    for w, (five, reasons) in enumerate(zip(proportions, unavailable, strict=True)):
        intervals: dict[str, Interval | None] = {}
        for i, p in enumerate(five, start=5 * w):
            if p.total < p.minimum:
                reasons[p.name] = f"{p.label}: {p.total} {p.unit}, at least {p.minimum} needed"
                intervals[p.name] = None
            else:
                estimate = p.successes / p.total
                # At 0 or all successes statsmodels' bound can miss the estimate by rounding.
                low = min(lower_bounds[i], estimate)
                high = max(upper_bounds[i], estimate)
                intervals[p.name] = Interval(estimate, low, high, "wilson")
        results.append(intervals)
    return results


def _class_shortfall(counts: ConfusionCounts, config: PerformanceConfig) -> str | None:
    """Why a metric that needs both classes cannot be computed, or None."""
    short = []
    if counts.positives < config.min_positives:
        short.append(f"{counts.positives} positive cases, at least {config.min_positives} needed")
    if counts.negatives < config.min_negatives:
        short.append(f"{counts.negatives} negative cases, at least {config.min_negatives} needed")
    return "; ".join(short) or None


def _auroc(
    positive: NDArray[np.bool_],
    score: NDArray[np.float64],
    counts: ConfusionCounts,
    config: PerformanceConfig,
    unavailable: dict[str, str],
) -> Interval | None:
    shortfall = _class_shortfall(counts, config)
    if shortfall is not None:
        unavailable["auroc"] = f"AUROC: {shortfall}"
        return None
    positive_scores, negative_scores = score[positive], score[~positive]
    auroc, variance = delong(positive_scores, negative_scores)
    if config.auroc_ci == "delong":
        return delong_interval(auroc, variance, config.confidence_level)
    resampled = bootstrap_aurocs(
        positive_scores, negative_scores, config.n_bootstrap, np.random.default_rng(config.seed)
    )
    tail = (1.0 - config.confidence_level) / 2.0
    lower, upper = np.quantile(resampled, [tail, 1.0 - tail])
    return Interval(auroc, float(lower), float(upper), "bootstrap")


@functools.lru_cache(maxsize=16)
def _normal_quantile(probability: float) -> float:
    """``norm.ppf``, kept per level: scipy's call costs ~100 us, and the tracker asks for the
    same level a few thousand times per refresh."""
    return float(norm.ppf(probability))


def delong_interval(auroc: float, variance: float, confidence_level: float) -> Interval:
    """``auroc +- z * sqrt(variance)`` clipped to [0, 1], z the normal quantile of the level."""
    half_width = _normal_quantile(0.5 + confidence_level / 2.0) * np.sqrt(variance)
    lower, upper = max(0.0, auroc - half_width), min(1.0, auroc + half_width)
    return Interval(auroc, float(lower), float(upper), "delong")


def _brier(
    positive: NDArray[np.bool_],
    score: NDArray[np.float64],
    counts: ConfusionCounts,
    config: PerformanceConfig,
    unavailable: dict[str, str],
) -> float | None:
    if counts.n < config.min_cases:
        unavailable["brier"] = f"Brier score: {counts.n} cases, at least {config.min_cases} needed"
        return None
    # sklearn.metrics.brier_score_loss computes the same (checked in the tests); written out
    # here because its input validation costs more than the mean itself.
    return float(np.mean((score - positive) ** 2))


def _reliability(
    positive: NDArray[np.bool_],
    score: NDArray[np.float64],
    counts: ConfusionCounts,
    config: PerformanceConfig,
    unavailable: dict[str, str],
) -> tuple[ReliabilityBin, ...]:
    """Reliability bins, or an empty tuple with ECE and reliability marked unavailable."""
    if counts.n < config.min_calibration_cases:
        reason = f"{counts.n} cases, at least {config.min_calibration_cases} needed"
        unavailable["ece"] = f"ECE: {reason}"
        unavailable["reliability"] = f"reliability diagram: {reason}"
        return ()
    return reliability_bins(positive, score, config.ece_bins)


def _recalibration(
    positive: NDArray[np.bool_],
    score: NDArray[np.float64],
    counts: ConfusionCounts,
    config: PerformanceConfig,
    unavailable: dict[str, str],
) -> tuple[float | None, float | None]:
    """Calibration slope and intercept, or (None, None) with both marked unavailable."""
    reason = _class_shortfall(counts, config)
    if reason is None and counts.n < config.min_calibration_cases:
        reason = f"{counts.n} cases, at least {config.min_calibration_cases} needed"
    if reason is None:
        fitted = logistic_recalibration(positive, score)
        if not isinstance(fitted, str):
            return fitted
        reason = fitted
    unavailable["calibration_slope"] = f"calibration slope: {reason}"
    unavailable["calibration_intercept"] = f"calibration intercept: {reason}"
    return None, None


# The config lives in config.py (light to import); these names stay importable from here.
__all__ = [
    "AurocMethod",
    "BinaryMetrics",
    "ConfusionCounts",
    "Interval",
    "InvalidInputError",
    "PerformanceConfig",
    "PerformanceError",
    "binary_metrics",
]
