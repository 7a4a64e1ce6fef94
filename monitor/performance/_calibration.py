"""Calibration of probability scores: reliability bins, binned ECE, logistic recalibration."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import isotonic_regression as scipy_isotonic
from sklearn._isotonic import _make_unique  # type: ignore[import-untyped]

Floats = NDArray[np.float64]

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

    Maximum likelihood by Newton's method (:func:`_newton_logit`, statsmodels' ``Logit().fit()``
    step for step). Well-calibrated scores give slope 1 and intercept 0; a slope below 1 means
    scores too extreme (overfitting), above 1 too timid; a negative intercept means scores too
    high overall. Returns the reason instead when the fit has no finite solution (scores that
    separate the classes) or the scores are all equal.
    """
    clipped = np.clip(scores, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    logits = np.log(clipped / (1.0 - clipped))
    if np.ptp(logits) == 0.0:
        return "all scores are equal, so there is no slope to fit"
    design = np.column_stack([np.ones_like(logits), logits])
    with warnings.catch_warnings():
        # Separation is detected from the fit's convergence (overflows on the way are expected).
        warnings.simplefilter("ignore")
        try:
            fitted = _newton_logit(labels.astype(np.float64), design)
        except np.linalg.LinAlgError:
            return _SEPARATION
    if fitted is None:
        return _SEPARATION
    intercept, slope = (float(value) for value in fitted)
    return slope, intercept


_NEWTON_MAX_ITERATIONS = 35
_NEWTON_TOLERANCE = 1e-8
_NEWTON_RIDGE = 1e-10


def _newton_logit(outcomes: NDArray[np.float64], design: NDArray[np.float64]) -> Floats | None:
    """The logistic regression's maximum-likelihood coefficients, None when Newton's method
    does not converge; LinAlgError for a singular Hessian.

    statsmodels' ``Logit(outcomes, design).fit()`` (0.14-0.15: ``LikelihoodModel.fit`` with
    ``_fit_newton``) operation for operation, so the numbers are the same to the last bit
    (``tests/unit/test_performance_calibration.py`` compares them): from zero, steps
    ``solve(H + ridge, gradient)`` on the mean log-likelihood until no coefficient moves more
    than the tolerance, at most 35 of them (reaching the 35th counts as not converged), then
    the inverse of the final Hessian, which fails for a singular one. Its model set-up (data
    checks, a rank computation, the results object) took 2-4 ms a fit, most of the tracker's
    label-free estimate (docs/benchmarks.md, issue 21 item 4).
    """
    cases = outcomes.shape[0]
    params = np.zeros(design.shape[1])
    previous = np.full_like(params, np.inf)
    iterations = 0
    while iterations < _NEWTON_MAX_ITERATIONS and np.any(
        np.abs(params - previous) > _NEWTON_TOLERANCE
    ):
        hessian = _mean_hessian(design, params, cases)
        hessian[np.diag_indices(hessian.shape[0])] += _NEWTON_RIDGE
        previous = params
        fitted = _logistic(np.dot(design, previous) + 0.0)
        gradient = -np.dot(outcomes - fitted, design) / cases
        params = previous - np.linalg.solve(hessian, gradient)
        iterations += 1
    np.linalg.inv(_mean_hessian(design, params, cases))
    return params if iterations < _NEWTON_MAX_ITERATIONS else None


def _mean_hessian(design: Floats, params: Floats, cases: int) -> Floats:
    """Minus the Hessian of the mean log-likelihood at ``params`` (statsmodels negates it
    twice: exact, so not here)."""
    fitted = _logistic(np.dot(design, params) + 0.0)
    return np.asarray(np.dot(fitted * (1 - fitted) * design.T, design) / cases)


def _logistic(linear: Floats) -> Floats:
    return np.asarray(1 / (1 + np.exp(-linear)))


def isotonic_knots(scores: Floats, outcomes: Floats) -> tuple[Floats, Floats]:
    """The knots (``X_thresholds_``, ``y_thresholds_``) of
    ``IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(scores, outcomes)``.

    scikit-learn's fit (1.9) step for step, without its parameter and input checks and the
    scipy interpolator it builds and we never call, which were 85 % of a fit on 500 cases
    (0.4 ms; a full refresh fits one per stream): sort by score then outcome, pool equal
    scores (scikit-learn's own ``_make_unique``, which treats scores closer than float64's
    resolution as equal), scipy's pool-adjacent-violators (what scikit-learn calls), clip to
    [0, 1], and drop the knots inside a flat run. Equal to the last bit:
    ``tests/unit/test_performance_calibration.py`` compares it with scikit-learn on 1,000 fits
    with ties and scores at 0. Inputs are the caller's to validate (finite, same length).
    """
    order = np.lexsort((outcomes, scores))
    x, y = scores[order], outcomes[order]
    knots_x, pooled, weights = _make_unique(x, y, np.ones_like(x))
    fitted = np.asarray(scipy_isotonic(pooled, weights=weights, increasing=True).x, np.float64)
    np.clip(fitted, 0.0, 1.0, fitted)
    keep = np.ones(len(fitted), dtype=bool)
    keep[1:-1] = np.not_equal(fitted[1:-1], fitted[:-2]) | np.not_equal(fitted[1:-1], fitted[2:])
    return np.asarray(knots_x[keep], np.float64), fitted[keep]
