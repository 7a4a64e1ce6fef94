"""Calibration of probability scores: reliability bins, binned ECE, logistic recalibration."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm  # type: ignore[import-untyped]
from numpy.typing import NDArray
from statsmodels.tools.sm_exceptions import (  # type: ignore[import-untyped]
    PerfectSeparationError,
)

LOGIT_CLIP = 1e-6
"""Scores are clipped to [1e-6, 1 - 1e-6] before the logit, so 0 and 1 stay finite."""

_SEPARATION = "the logistic fit has no finite solution (the scores separate the classes, or nearly)"


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One bin of the reliability diagram: scores in (lower, upper] (the first bin includes 0)."""

    lower: float
    upper: float
    count: int
    mean_score: float | None
    """Mean score of the bin's cases; None for an empty bin."""
    observed_rate: float | None
    """Share of positives among the bin's cases; None for an empty bin."""


def reliability_bins(
    labels: NDArray[np.bool_], scores: NDArray[np.float64], n_bins: int
) -> tuple[ReliabilityBin, ...]:
    """Equal-width bins on [0, 1], assigned as ``sklearn.calibration.calibration_curve`` does.

    Bin ``i`` holds the scores in ``(i / n_bins, (i + 1) / n_bins]``, the first bin also 0:
    ``searchsorted`` of the inner edges, so a score on an edge falls in the lower bin.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.searchsorted(edges[1:-1], scores)
    counts = np.bincount(bin_of, minlength=n_bins)
    score_sums = np.bincount(bin_of, weights=scores, minlength=n_bins)
    positive_sums = np.bincount(bin_of, weights=labels.astype(np.float64), minlength=n_bins)
    return tuple(
        ReliabilityBin(
            lower=i / n_bins,
            upper=(i + 1) / n_bins,
            count=int(counts[i]),
            mean_score=float(score_sums[i] / counts[i]) if counts[i] else None,
            observed_rate=float(positive_sums[i] / counts[i]) if counts[i] else None,
        )
        for i in range(n_bins)
    )


def expected_calibration_error(bins: tuple[ReliabilityBin, ...]) -> float:
    """Sum over bins of (bin's share of cases) x |mean score - observed rate|."""
    total = sum(one.count for one in bins)
    return float(
        sum(
            one.count / total * abs(one.mean_score - one.observed_rate)
            for one in bins
            if one.mean_score is not None and one.observed_rate is not None
        )
    )


def logistic_recalibration(
    labels: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[float, float] | str:
    """Slope and intercept of ``logit P(y = 1) = intercept + slope * logit(score)``, or why not.

    Maximum likelihood with statsmodels' ``Logit`` (Newton). Well-calibrated scores give slope 1
    and intercept 0; a slope below 1 means scores too extreme (overfitting), above 1 too timid; a
    negative intercept means scores too high overall. Returns the reason instead when the fit
    has no finite solution (scores that separate the classes) or the scores are all equal.
    """
    clipped = np.clip(scores, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    logits = np.log(clipped / (1.0 - clipped))
    if np.ptp(logits) == 0.0:
        return "all scores are equal, so there is no slope to fit"
    design = np.column_stack([np.ones_like(logits), logits])
    with warnings.catch_warnings():
        # Separation is detected below from the fit's own convergence flag.
        warnings.simplefilter("ignore")
        try:
            fit = sm.Logit(labels.astype(np.float64), design).fit(disp=0)
        except (np.linalg.LinAlgError, PerfectSeparationError):
            return _SEPARATION
    if not fit.mle_retvals["converged"]:
        return _SEPARATION
    intercept, slope = (float(value) for value in fit.params)
    return slope, intercept
