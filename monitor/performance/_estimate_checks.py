"""The checks behind a label-free estimate's ``trusted``: reference support and calibration.

Pure statistics on arrays; :mod:`monitor.performance.estimate` feeds them its config and map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

from monitor.performance._calibration import logistic_recalibration

Floats = NDArray[np.float64]

LOGIT_CLIP = 1e-7
"""Scores of exactly 0 or 1 have an infinite logit; they are moved this far inside."""


@dataclass(frozen=True, slots=True)
class SupportCheck:
    """How much of the window lies where the reference had cases to calibrate on."""

    out_of_range_share: float
    """Share of window scores outside [min, max] of the reference scores."""
    unsupported_share: float
    """Share of window scores with too few reference cases nearby (see :func:`check_support`)."""


@dataclass(frozen=True, slots=True)
class CalibrationCheck:
    """The window's labelled cases tested against the reference's calibration map."""

    n_labelled: int
    observed_positive_rate: float
    expected_positive_rate: float
    """Mean calibrated probability of the labelled cases."""
    in_the_large_p_value: float
    """Observed vs expected positive count: normal, variance sum of p (1 - p), two-sided."""
    slope: float | None
    """Cox's calibration slope of the cases on the map (1 when the map holds; below 1: the
    model now separates the classes less than on the reference). None without a finite fit."""
    slope_p_value: float | None
    """Likelihood ratio of intercept 0 and slope 1 against the fitted pair, chi-square 2 df."""
    drift: bool
    explanation: str


def logit(scores: Floats) -> Floats:
    """``log(s / (1 - s))`` with ``s`` held ``LOGIT_CLIP`` inside (0, 1)."""
    clipped = np.clip(scores, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.asarray(np.log(clipped) - np.log1p(-clipped))


def sigmoid(logits: Floats) -> Floats:
    """Inverse of :func:`logit`; the tanh form does not overflow for large negative logits."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * logits)))


def check_support(
    scores: Floats, sorted_reference: Floats, radius_logit: float, min_support: int
) -> SupportCheck:
    """Shares of ``scores`` outside the reference's range, and with fewer than ``min_support``
    reference scores within ``radius_logit`` of them on the logit scale.

    Logits, because sigmoid scores crowd near 0 and 1 where a fixed score distance would span
    very different numbers of cases. Two binary searches per score: O((n + m) log m).
    """
    outside = (scores < sorted_reference[0]) | (scores > sorted_reference[-1])
    reference_logits, logits = logit(sorted_reference), logit(scores)
    upper = np.searchsorted(reference_logits, logits + radius_logit, side="right")
    lower = np.searchsorted(reference_logits, logits - radius_logit, side="left")
    return SupportCheck(
        out_of_range_share=float(outside.mean()),
        unsupported_share=float(((upper - lower) < min_support).mean()),
    )


def check_calibration(
    positive: NDArray[np.bool_], probabilities: Floats, alpha: float, n_reference: int
) -> CalibrationCheck:
    """Do labelled cases follow their calibrated probabilities? Two tests, Bonferroni at ``alpha``.

    In the large: observed positives against ``sum p`` (normal approximation). Slope: Cox's
    recalibration ``logit P(y) = a + b logit(p)`` fitted by maximum likelihood, and the
    likelihood ratio of ``(a, b) = (0, 1)``, which a loss of separation (slope below 1) fails
    even when the overall positive rate still matches. Drift when either p-value is below
    ``alpha / 2``. Needs at least one case; ``probabilities`` strictly inside (0, 1).

    The map is itself an estimate from ``n_reference`` cases. Its error in a sum over ``n``
    cases grows like ``n^2 / n_reference`` against the labels' ``n``, so both statistics are
    divided by ``1 + n / n_reference`` (a design effect); without it, a check on 500 labels
    against a 2,000-case isotonic map raised about 4% false alarms at a nominal 1%.
    """
    outcomes = positive.astype(np.float64)
    n = int(outcomes.size)
    rate, expected_rate = float(outcomes.mean()), float(probabilities.mean())
    inflation = 1.0 + n / n_reference
    variance = float((probabilities * (1.0 - probabilities)).sum()) * inflation
    z = (outcomes.sum() - probabilities.sum()) / np.sqrt(variance)
    large_p = float(2.0 * normal_sf(abs(z)))
    slope, slope_p = _slope_test(positive, outcomes, probabilities, inflation)
    drift = min(large_p, 1.0 if slope_p is None else slope_p) < alpha / 2
    explanation = (
        f"observed {rate:.0%} positive vs {expected_rate:.0%} expected among {n} labelled "
        f"cases (p={large_p:.2g})"
    )
    if slope is not None:
        explanation += f"; calibration slope {slope:.2f}, 1 if calibrated (p={slope_p:.2g})"
    return CalibrationCheck(
        n_labelled=n,
        observed_positive_rate=rate,
        expected_positive_rate=expected_rate,
        in_the_large_p_value=large_p,
        slope=slope,
        slope_p_value=slope_p,
        drift=drift,
        explanation=("calibration drift detected: " if drift else "") + explanation,
    )


def _slope_test(
    positive: NDArray[np.bool_], outcomes: Floats, probabilities: Floats, inflation: float
) -> tuple[float | None, float | None]:
    if positive.all() or not positive.any():
        return None, None
    fitted = logistic_recalibration(positive, probabilities)
    if isinstance(fitted, str):
        return None, None
    slope, intercept = fitted
    refitted = sigmoid(intercept + slope * logit(probabilities))
    statistic = 2.0 * (
        _log_likelihood(outcomes, refitted) - _log_likelihood(outcomes, probabilities)
    )
    return slope, float(chi2_sf(max(0.0, statistic) / inflation, df=2))


def normal_sf(z: float) -> float:
    """``scipy.stats.norm.sf(z)``: the function scipy's own ``_sf`` calls (``ndtr(-z)``),
    the same value to the last bit, without the distribution's argument handling (60 us a
    call, two calls a stream in a refresh)."""
    return float(special.ndtr(-z))


def chi2_sf(x: float, df: int) -> float:
    """``scipy.stats.chi2.sf(x, df)`` as scipy computes it (``chdtrc(df, x)``)."""
    return float(special.chdtrc(df, x))


def _log_likelihood(outcomes: Floats, probabilities: Floats) -> float:
    held = np.clip(probabilities, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return float((outcomes * np.log(held) + (1.0 - outcomes) * np.log1p(-held)).sum())
