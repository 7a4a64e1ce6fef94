"""Label-free performance estimates (CBPE) on the simulator's score model.

The world: labels ``y ~ Bernoulli(0.2)`` and scores from :mod:`monitor.simulate.scores`, whose
logits are normal with means ``separation / 2`` apart, so the true calibration is
``P(y = 1 | s) = sigmoid(logit(0.2) + separation * logit(s))``. A window under *covariate shift*
draws its scores from the same model with another case mix (prevalence 0.45 or 0.1 before
relabelling) and then its labels from that true calibration: the scores move, the realised
prevalence moves (0.31, 0.16), P(y | score) holds. *Concept shift* is the simulator's degraded
scanner: separation 0.74 instead of 1.81 (AUROC 0.70 instead of 0.90), so P(y | score) changes.

Tolerance. The estimate is the expected metric given the window's scores; the realised metric is
one draw around it, so the gap is the realised metric's sampling noise plus the map's error. Over
50 seeds x 3 windows x 2 methods at n = 2,000 (and 4,000), |estimate - realised| divided by the
realised metric's standard error (binomial for sensitivity and specificity, Hanley-McNeil for
AUROC) averaged 0.6-1.0 (0.80 for a pure normal draw) with a maximum of 3.5. So each window must
be within 4 standard errors (at n = 2,000 and prevalence 0.2: 0.077 sensitivity, 0.036
specificity, 0.047 AUROC), and the mean over all windows within 1.3: a bias of one standard
error would lift it to about 1.2-1.3, so a biased estimator cannot hide under the per-window
limit. The calibration check at 1% level raised 1-3% false alarms with 150-500 labels under
covariate shift and flagged concept shift in 87-92% of windows with 150 labels, 100% with 500.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats as scipy_stats
from sklearn.isotonic import IsotonicRegression  # type: ignore[import-untyped]
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from monitor.performance._estimate_checks import chi2_sf, normal_sf
from monitor.performance.estimate import (
    CalibrationMap,
    CalibrationMethod,
    EstimateConfig,
    InsufficientReferenceError,
    PerformanceEstimate,
    check_labelled,
    compare,
    estimate_performance,
    expected_auroc,
    fit_calibration,
)
from monitor.performance.metrics import InvalidInputError, PerformanceError
from monitor.simulate.profiles import DEGRADED, default_profile
from monitor.simulate.scores import THRESHOLD, lesion_scores, separation

PROFILE = default_profile("site-01")
PREVALENCE = 0.2
N = 2000
N_LABELLED = 150
METHODS: tuple[CalibrationMethod, ...] = ("isotonic", "platt")
Window = tuple[NDArray[np.bool_], NDArray[np.float64]]


def true_probability(scores: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(y = 1 | score) of the reference population (module docstring)."""
    logits = np.log(scores) - np.log1p(-scores)
    intercept = np.log(PREVALENCE / (1 - PREVALENCE))
    return np.asarray(1.0 / (1.0 + np.exp(-(intercept + separation(PROFILE) * logits))))


def reference(rng: np.random.Generator, n: int = N, prevalence: float = PREVALENCE) -> Window:
    positive = rng.random(n) < prevalence
    return positive, lesion_scores(PROFILE, positive, rng)


def case_mix(mix: float) -> Callable[[np.random.Generator, int], Window]:
    """Covariate shift: scores of a population with ``mix`` positives, labels from P(y | s)."""

    def draw(rng: np.random.Generator, n: int) -> Window:
        scores = lesion_scores(PROFILE, rng.random(n) < mix, rng)
        return rng.random(n) < true_probability(scores), scores

    return draw


def degraded_scanner(rng: np.random.Generator, n: int) -> Window:
    """Concept shift: same prevalence, the degraded reader's weaker separation."""
    positive = rng.random(n) < PREVALENCE
    return positive, lesion_scores(DEGRADED, positive, rng)


COVARIATE_SHIFTS = {
    "unchanged": case_mix(0.2),
    "sicker": case_mix(0.45),
    "healthier": case_mix(0.1),
}


def realised(positive: NDArray[np.bool_], scores: NDArray[np.float64]) -> NDArray[np.float64]:
    predicted = scores >= THRESHOLD
    sensitivity = (predicted & positive).sum() / positive.sum()
    specificity = (~predicted & ~positive).sum() / (~positive).sum()
    return np.array([sensitivity, specificity, roc_auc_score(positive, scores)])


def standard_errors(
    positive: NDArray[np.bool_], metrics: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Binomial for sensitivity and specificity, Hanley & McNeil (1982) for the AUROC."""
    m, k = positive.sum(), (~positive).sum()
    sensitivity, specificity, auroc = metrics
    q1, q2 = auroc / (2 - auroc), 2 * auroc**2 / (1 + auroc)
    auroc_var = (auroc * (1 - auroc) + (m - 1) * (q1 - auroc**2) + (k - 1) * (q2 - auroc**2)) / (
        m * k
    )
    return np.sqrt(
        [sensitivity * (1 - sensitivity) / m, specificity * (1 - specificity) / k, auroc_var]
    )


def estimated(estimate: PerformanceEstimate) -> NDArray[np.float64]:
    assert estimate.sensitivity is not None and estimate.specificity is not None
    assert estimate.auroc is not None
    return np.array([estimate.sensitivity, estimate.specificity, estimate.auroc])


def labelled_subset(rng: np.random.Generator, window: Window, n: int = N_LABELLED) -> Window:
    chosen = rng.choice(window[1].size, size=n, replace=False)
    return window[0][chosen], window[1][chosen]


# --- (i) covariate shift: the estimate tracks the realised metrics --------------------------


@pytest.mark.parametrize("method", METHODS)
def test_estimate_tracks_realised_metrics_under_covariate_shift(method: CalibrationMethod) -> None:
    config = EstimateConfig(method=method)
    z_scores = []
    for seed, (name, draw) in product(range(6), COVARIATE_SHIFTS.items()):
        rng = np.random.default_rng(seed)
        calibration = fit_calibration(*reference(rng), config)
        positive, scores = draw(rng, N)
        estimate = estimate_performance(scores, THRESHOLD, calibration)
        truth = realised(positive, scores)
        z = np.abs(estimated(estimate) - truth) / standard_errors(positive, truth)
        assert (z < 4.0).all(), (seed, name, estimated(estimate), truth)
        assert estimate.trusted and not estimate.reasons, estimate.reasons
        z_scores.append(z)
    assert np.mean(z_scores) < 1.3


def test_estimated_prevalence_follows_the_case_mix() -> None:
    rng = np.random.default_rng(7)
    calibration = fit_calibration(*reference(rng))
    for draw in COVARIATE_SHIFTS.values():
        positive, scores = draw(rng, N)
        estimate = estimate_performance(scores, THRESHOLD, calibration)
        assert abs(estimate.prevalence - positive.mean()) < 0.03


@pytest.mark.parametrize("method", METHODS)
def test_calibration_check_rarely_alarms_under_covariate_shift(method: CalibrationMethod) -> None:
    """80 windows with 150 labels at a 1% level: at most 4 alarms (observed rate 1-3%)."""
    config = EstimateConfig(method=method)
    alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        calibration = fit_calibration(*reference(rng), config)
        for draw in (*COVARIATE_SHIFTS.values(), COVARIATE_SHIFTS["unchanged"]):
            positive, scores = labelled_subset(rng, draw(rng, N))
            alarms += check_labelled(scores, positive, calibration).drift
    assert alarms <= 4


# --- (ii) concept shift: the check flags it once labels arrive --------------------------------


def test_concept_shift_with_labels_is_untrusted() -> None:
    rng = np.random.default_rng(11)
    calibration = fit_calibration(*reference(rng))
    window = degraded_scanner(rng, N)
    labels, labelled_scores = labelled_subset(rng, window, n=300)
    estimate = estimate_performance(
        window[1], THRESHOLD, calibration, labelled_scores=labelled_scores, labels=labels
    )
    assert not estimate.trusted
    check = estimate.calibration_check
    assert check is not None and check.drift and check.slope is not None
    assert check.slope < 0.7  # the degraded reader separates less than the map assumes
    assert estimate.reasons[0].startswith("calibration drift detected: observed ")
    assert "expected among 300 labelled cases" in estimate.reasons[0]
    assert "calibration slope" in estimate.reasons[0]


def test_concept_shift_is_flagged_in_most_windows_with_150_labels() -> None:
    """Power about 0.9 per window (module docstring); 40 windows must flag at least 30."""
    flagged = 0
    for seed in range(40):
        rng = np.random.default_rng(200 + seed)
        calibration = fit_calibration(*reference(rng))
        positive, scores = labelled_subset(rng, degraded_scanner(rng, N))
        flagged += check_labelled(scores, positive, calibration).drift
    assert flagged >= 30


def test_concept_shift_without_labels_is_reported_as_unverified_not_detected() -> None:
    """Without labels nothing can show concept shift: the scores stay inside the reference's
    range, so the estimate reads trusted, overstates sensitivity and AUROC by far more than
    the tolerance, and says only that calibration is unverified. The score-drift detectors
    (monitor.drift.scores) are what sees this window change."""
    rng = np.random.default_rng(12)
    calibration = fit_calibration(*reference(rng))
    positive, scores = degraded_scanner(rng, N)
    estimate = estimate_performance(scores, THRESHOLD, calibration)
    assert estimate.trusted and estimate.calibration_check is None
    assert estimate.caveats == (
        "calibration not verified: 0 labelled cases in the window, 30 needed; "
        "P(y | score) is assumed to be the reference's",
    )
    gap = estimated(estimate) - realised(positive, scores)
    assert gap[0] > 0.1 and gap[2] > 0.1


def test_too_few_labels_are_not_checked() -> None:
    rng = np.random.default_rng(13)
    calibration = fit_calibration(*reference(rng))
    window = degraded_scanner(rng, N)
    labels, labelled_scores = labelled_subset(rng, window, n=29)
    estimate = estimate_performance(
        window[1], THRESHOLD, calibration, labelled_scores=labelled_scores, labels=labels
    )
    assert estimate.calibration_check is None
    assert estimate.caveats[0].startswith("calibration not verified: 29 labelled cases")


def test_scores_outside_the_reference_are_untrusted() -> None:
    rng = np.random.default_rng(14)
    positive, scores = reference(rng)
    calibration = fit_calibration(positive, scores)
    logits = np.log(scores) - np.log1p(-scores)
    shifted = 1.0 / (1.0 + np.exp(-(logits + 4.0)))  # a model update that inflates scores
    estimate = estimate_performance(shifted, THRESHOLD, calibration)
    assert not estimate.trusted
    assert estimate.support.out_of_range_share > 0.02
    assert estimate.support.unsupported_share > 0.10
    assert "outside the reference score range" in estimate.reasons[0]
    assert "reference cases within 0.25 logit" in estimate.reasons[1]


# --- (iii) guards, the AUROC formula and compare() ------------------------------------------


def test_too_small_reference_raises() -> None:
    positive, scores = reference(np.random.default_rng(0), n=199)
    with pytest.raises(InsufficientReferenceError, match="199 cases"):
        fit_calibration(positive, scores)


@pytest.mark.parametrize("method", METHODS)
def test_one_class_reference_raises(method: CalibrationMethod) -> None:
    scores = np.random.default_rng(0).random(500)
    with pytest.raises(InsufficientReferenceError, match="0 positive, 500 negative"):
        fit_calibration(np.zeros(500, dtype=int), scores, EstimateConfig(method=method))


def test_too_few_positives_raise() -> None:
    positive, scores = reference(np.random.default_rng(0), n=500, prevalence=0.02)
    with pytest.raises(InsufficientReferenceError, match="at least 20 of each class"):
        fit_calibration(positive, scores)
    assert issubclass(InsufficientReferenceError, PerformanceError)


def test_malformed_input_raises() -> None:
    positive, scores = reference(np.random.default_rng(0))
    calibration = fit_calibration(positive, scores)
    with pytest.raises(InvalidInputError):
        fit_calibration(positive[:-1], scores)
    with pytest.raises(InvalidInputError):
        fit_calibration(positive.astype(int) * 2, scores)
    with pytest.raises(ValueError, match="probabilities"):
        estimate_performance([0.2, 1.5], THRESHOLD, calibration)
    with pytest.raises(InvalidInputError):
        estimate_performance([], THRESHOLD, calibration)
    with pytest.raises(InvalidInputError):
        estimate_performance(scores, 1.2, calibration)
    with pytest.raises(InvalidInputError, match="come together"):
        estimate_performance(scores, THRESHOLD, calibration, labelled_scores=scores[:40])
    with pytest.raises(InvalidInputError, match="fitted with 'isotonic'"):
        estimate_performance(scores, THRESHOLD, calibration, EstimateConfig(method="platt"))


def brute_force_auroc(scores: NDArray[np.float64], probabilities: NDArray[np.float64]) -> float:
    """The module docstring's double sum over pairs i != j, literally."""
    above = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
    weights = probabilities[:, None] * (1 - probabilities[None, :])
    np.fill_diagonal(weights, 0.0)
    return float((weights * above).sum() / weights.sum())


@pytest.mark.parametrize("seed", range(20))
def test_expected_auroc_matches_the_pairwise_sum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    scores = np.round(rng.random(n), 1)  # rounded: many ties
    probabilities = rng.random(n)
    assert expected_auroc(scores, probabilities) == pytest.approx(
        brute_force_auroc(scores, probabilities)
    )


def test_expected_auroc_with_known_labels_is_the_auroc() -> None:
    rng = np.random.default_rng(3)
    positive, scores = reference(rng, n=500)
    scores = np.round(scores, 2)
    assert expected_auroc(scores, positive.astype(float)) == pytest.approx(
        roc_auc_score(positive, scores)
    )
    assert expected_auroc(scores, np.zeros(500)) is None


def identity_map() -> CalibrationMap:
    """A map that takes every score for its own probability."""
    return CalibrationMap(
        method="isotonic",
        score_knots=np.array([0.0, 1.0]),
        probability_knots=np.array([0.0, 1.0]),
        platt_slope=1.0,
        platt_intercept=0.0,
        reference_scores=np.linspace(0.0, 1.0, 1001),
        config=EstimateConfig(min_support=1),
    )


def test_cbpe_counts_by_hand() -> None:
    estimate = estimate_performance([0.9, 0.6, 0.4, 0.1], 0.5, identity_map())
    assert estimate.confusion.tp == pytest.approx(1.5)  # 0.9 + 0.6
    assert estimate.confusion.fp == pytest.approx(0.5)  # 0.1 + 0.4
    assert estimate.confusion.fn == pytest.approx(0.5)  # 0.4 + 0.1
    assert estimate.confusion.tn == pytest.approx(1.5)  # 0.6 + 0.9
    assert estimate.sensitivity == pytest.approx(0.75)
    assert estimate.specificity == pytest.approx(0.75)
    assert estimate.ppv == pytest.approx(0.75)
    assert estimate.prevalence == pytest.approx(0.5)
    assert estimate.trusted


def test_isotonic_map_is_sklearns() -> None:
    rng = np.random.default_rng(4)
    positive, scores = reference(rng)
    calibration = fit_calibration(positive, scores)
    fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, positive)
    grid = np.linspace(0.0, 1.0, 501)
    np.testing.assert_allclose(calibration.apply(grid), fitted.predict(grid))


def test_platt_map_recovers_the_true_calibration() -> None:
    rng = np.random.default_rng(5)
    calibration = fit_calibration(*reference(rng, n=20_000), EstimateConfig(method="platt"))
    assert calibration.platt_slope == pytest.approx(separation(PROFILE), rel=0.05)
    grid = np.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(calibration.apply(grid), true_probability(grid), atol=0.02)


def test_config_fingerprint_is_stamped_and_tracks_the_config() -> None:
    rng = np.random.default_rng(6)
    calibration = fit_calibration(*reference(rng))
    stricter = EstimateConfig(calibration_alpha=0.001)
    scores = reference(rng)[1]
    assert estimate_performance(scores, THRESHOLD, calibration).config_fingerprint == (
        EstimateConfig().fingerprint()
    )
    assert estimate_performance(scores, THRESHOLD, calibration, stricter).config_fingerprint == (
        stricter.fingerprint()
    )
    assert stricter.fingerprint() != EstimateConfig().fingerprint()


def test_compare_puts_estimate_next_to_realised() -> None:
    estimate = estimate_performance([0.9, 0.6, 0.4, 0.1], 0.5, identity_map())
    comparison = compare(estimate, 0.70, 0.80, None)
    assert comparison.sensitivity.estimated == pytest.approx(0.75)
    assert comparison.sensitivity.realised == 0.70
    assert comparison.sensitivity.difference == pytest.approx(-0.05)
    assert comparison.specificity.difference == pytest.approx(0.05)
    assert comparison.auroc.realised is None and comparison.auroc.difference is None
    assert comparison.auroc.estimated == estimate.auroc
    assert comparison.trusted and comparison.config_fingerprint == estimate.config_fingerprint


def test_the_checks_tail_probabilities_are_scipys_to_the_last_bit() -> None:
    """``normal_sf`` and ``chi2_sf`` call the functions scipy's distributions call, without
    their argument handling: the same p-values, so the same estimates and trust decisions."""
    rng = np.random.default_rng(31)
    z = np.concatenate([np.abs(rng.normal(0.0, 3.0, 500)), [0.0, 1e-300, 8.5, 40.0, np.inf]])
    x = np.concatenate([rng.exponential(5.0, 500), [0.0, 1e-12, 80.0, 500.0]])
    assert [normal_sf(float(v)) for v in z] == [float(scipy_stats.norm.sf(v)) for v in z]
    assert [chi2_sf(float(v), df=2) for v in x] == [float(scipy_stats.chi2.sf(v, df=2)) for v in x]
