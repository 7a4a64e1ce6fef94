"""``_calibration.logistic_recalibration``: Newton's method written out in numpy gives what
statsmodels' ``Logit().fit()`` gave before it, to the last bit, including the fits that do
not converge (separated classes) and those it refuses."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm  # type: ignore[import-untyped]
from numpy.typing import NDArray
from sklearn.isotonic import IsotonicRegression  # type: ignore[import-untyped]

from monitor.performance._calibration import LOGIT_CLIP, isotonic_knots, logistic_recalibration

SEPARATION = "the logistic fit has no finite solution (the scores separate the classes, or nearly)"


def _statsmodels(
    labels: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[float, float] | str:
    """What ``logistic_recalibration`` returned when it called statsmodels."""
    clipped = np.clip(scores, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    logits = np.log(clipped / (1.0 - clipped))
    if np.ptp(logits) == 0.0:
        return "all scores are equal, so there is no slope to fit"
    design = np.column_stack([np.ones_like(logits), logits])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = sm.Logit(labels.astype(np.float64), design).fit(disp=0)
        except np.linalg.LinAlgError:
            return SEPARATION
    if not fit.mle_retvals["converged"]:
        return SEPARATION
    intercept, slope = (float(value) for value in fit.params)
    return slope, intercept


def _case(kind: str, rng: np.random.Generator) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    n = int(rng.integers(3, 1500))
    scores = rng.random(n)
    if kind == "calibrated":
        labels = rng.random(n) < scores
    elif kind == "overconfident":
        labels = rng.random(n) < scores**3
    elif kind == "separated":
        labels = scores > 0.5
    elif kind == "nearly separated":
        labels = (scores > 0.5) ^ (rng.random(n) < 0.01)
    elif kind == "tied scores":
        scores = np.round(scores, 1)
        labels = rng.random(n) < scores
    else:  # scores at 0 and 1, a rare class
        scores = np.clip(rng.normal(0.5, 0.4, n), 0.0, 1.0)
        labels = rng.random(n) < 0.05
    return labels, scores


@pytest.mark.parametrize(
    "kind",
    ["calibrated", "overconfident", "separated", "nearly separated", "tied scores", "extremes"],
)
def test_the_fit_is_statsmodels_logit_to_the_last_bit(kind: str) -> None:
    rng = np.random.default_rng(21)
    verdicts = set()
    for _ in range(150):
        labels, scores = _case(kind, rng)
        ours, theirs = logistic_recalibration(labels, scores), _statsmodels(labels, scores)
        assert ours == theirs
        verdicts.add(type(ours))
    if kind == "separated":
        assert verdicts == {str}
    else:  # fitted, bar some of the smallest samples
        assert tuple in verdicts


def test_calibrated_scores_fit_slope_one_and_overconfident_ones_less() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 1.5, 20_000)
    scores = 1.0 / (1.0 + np.exp(-logits))
    calibrated = rng.random(scores.size) < scores
    slope, intercept = logistic_recalibration(calibrated, scores)  # type: ignore[misc]
    assert slope == pytest.approx(1.0, abs=0.05) and intercept == pytest.approx(0.0, abs=0.05)
    overconfident = rng.random(scores.size) < 1.0 / (1.0 + np.exp(-0.5 * logits))
    slope, _ = logistic_recalibration(overconfident, scores)  # type: ignore[misc]
    assert slope == pytest.approx(0.5, abs=0.05)


def test_isotonic_knots_are_scikit_learns_to_the_last_bit() -> None:
    """``isotonic_knots`` against ``IsotonicRegression.fit`` itself on 1,000 seeded fits: sizes
    2-800, prevalence 5-95 %, scores rounded to 1-3 decimals (ties, pooled by scikit-learn)
    in a third of them and a third of the scores at exactly 0 in every seventh."""
    rng = np.random.default_rng(17)
    for trial in range(1_000):
        n = int(rng.integers(2, 800))
        outcomes = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-rng.normal(rng.uniform(0.0, 3.0) * outcomes - 1.0, 1.0)))
        if trial % 3 == 0:
            scores = np.round(scores, int(rng.integers(1, 4)))
        if trial % 7 == 0:
            scores[: n // 3] = 0.0
        fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        fitted.fit(scores, outcomes)
        knots_x, knots_y = isotonic_knots(scores, outcomes)
        assert np.array_equal(knots_x, fitted.X_thresholds_)
        assert np.array_equal(knots_y, fitted.y_thresholds_)
