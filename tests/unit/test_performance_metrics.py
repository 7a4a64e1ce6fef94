"""Performance metrics with intervals, calibration and subgroups.

Every metric is checked against an independent implementation on the same seeded data:
scikit-learn (AUROC, confusion matrix, Brier score, reliability bins, unpenalised logistic fit),
statsmodels (Wilson intervals, GLM binomial fit) and scipy (Wilson intervals from ``binomtest``).
The statistical tests are seeded: each run sees the same samples, so thresholds cannot flake.
With 300 samples and a true coverage of 95%, the observed coverage lies in [0.91, 0.98] with
probability above 99% (binomial), so that range tests the level without making the suite fragile.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydantic import ValidationError
from scipy.stats import binomtest, norm
from sklearn.calibration import calibration_curve  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.metrics import (  # type: ignore[import-untyped]
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
)
from statsmodels.stats.proportion import proportion_confint  # type: ignore[import-untyped]

from monitor.performance.metrics import (
    AurocMethod,
    BinaryMetrics,
    InvalidInputError,
    PerformanceConfig,
    PerformanceError,
    binary_metrics,
)
from monitor.performance.subgroups import subgroup_metrics

THRESHOLD = 0.3
COVERAGE_SAMPLES = 300


def sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def calibrated_window(
    seed: int, n: int = 5000, spread: float = 1.5, offset: float = -1.5
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Labels drawn from the scores themselves: scores that are calibrated by construction."""
    rng = np.random.default_rng(seed)
    scores = sigmoid(rng.normal(size=n) * spread + offset)
    labels = rng.random(n) < scores
    return labels, scores


def binormal_window(
    seed: int, n_positive: int, n_negative: int, separation: float
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Score logits N(separation, 1) for positives, N(0, 1) for negatives: AUROC Φ(sep / √2)."""
    rng = np.random.default_rng(seed)
    logits = np.concatenate(
        [rng.normal(separation, 1.0, n_positive), rng.normal(0.0, 1.0, n_negative)]
    )
    labels = np.concatenate([np.ones(n_positive, bool), np.zeros(n_negative, bool)])
    return labels, sigmoid(logits)


Window = tuple[NDArray[np.bool_], NDArray[np.float64], BinaryMetrics]


@pytest.fixture(scope="module")
def window() -> Window:
    labels, scores = calibrated_window(seed=1)
    return labels, scores, binary_metrics(labels, scores, THRESHOLD)


# -- against the reference implementations ------------------------------------------------------


def test_counts_match_sklearn_confusion_matrix(window: Window) -> None:
    labels, scores, metrics = window
    tn, fp, fn, tp = confusion_matrix(labels, scores >= THRESHOLD).ravel()
    counts = metrics.counts
    assert (counts.tn, counts.fp, counts.fn, counts.tp) == (tn, fp, fn, tp)
    assert counts.n == labels.size
    assert (counts.positives, counts.negatives) == (labels.sum(), (~labels).sum())
    assert metrics.prevalence is not None
    assert metrics.prevalence.estimate == pytest.approx(labels.mean())


def test_auroc_matches_roc_auc_score(window: Window) -> None:
    labels, scores, metrics = window
    assert metrics.auroc is not None
    assert metrics.auroc.method == "delong"
    assert metrics.auroc.estimate == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_with_ties_matches_roc_auc_score() -> None:
    labels, scores = calibrated_window(seed=2, n=800)
    rounded = np.round(scores, 1)  # ten or so distinct values: ties everywhere
    metrics = binary_metrics(labels, rounded, THRESHOLD)
    assert metrics.auroc is not None
    assert metrics.auroc.estimate == pytest.approx(roc_auc_score(labels, rounded), abs=1e-12)


def test_wilson_intervals_match_statsmodels_and_scipy(window: Window) -> None:
    _, _, metrics = window
    c = metrics.counts
    expected = {
        "prevalence": (c.positives, c.n),
        "sensitivity": (c.tp, c.positives),
        "specificity": (c.tn, c.negatives),
        "ppv": (c.tp, c.tp + c.fp),
        "npv": (c.tn, c.tn + c.fn),
    }
    for name, (successes, total) in expected.items():
        interval = getattr(metrics, name)
        assert interval.method == "wilson"
        assert interval.estimate == pytest.approx(successes / total)
        lower, upper = proportion_confint(successes, total, alpha=0.05, method="wilson")
        assert (interval.lower, interval.upper) == pytest.approx((lower, upper), abs=1e-12)
        scipy_ci = binomtest(successes, total).proportion_ci(0.95, method="wilson")
        assert (interval.lower, interval.upper) == pytest.approx(
            (scipy_ci.low, scipy_ci.high), abs=1e-12
        )


def test_brier_matches_sklearn(window: Window) -> None:
    labels, scores, metrics = window
    assert metrics.brier == pytest.approx(brier_score_loss(labels, scores), abs=1e-15)


def test_reliability_bins_and_ece_match_sklearn_calibration_curve(window: Window) -> None:
    labels, scores, metrics = window
    observed, predicted = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    filled = [one for one in metrics.reliability if one.count > 0]
    assert len(metrics.reliability) == 10
    assert [one.observed_rate for one in filled] == pytest.approx(observed, abs=1e-12)
    assert [one.mean_score for one in filled] == pytest.approx(predicted, abs=1e-12)
    assert sum(one.count for one in metrics.reliability) == labels.size
    shares = np.array([one.count for one in filled]) / labels.size
    assert metrics.ece == pytest.approx(float(np.sum(shares * np.abs(predicted - observed))))


def test_reliability_bins_put_a_score_on_an_edge_in_the_lower_bin() -> None:
    scores = np.r_[np.full(50, 0.3), np.full(50, 0.0), np.full(50, 1.0)]
    labels = np.arange(150) % 2 == 0
    bins = binary_metrics(labels, scores, THRESHOLD).reliability
    assert [(one.lower, one.upper, one.count) for one in bins if one.count] == [
        (0.0, 0.1, 50),
        (0.2, 0.3, 50),
        (0.9, 1.0, 50),
    ]
    observed, _ = calibration_curve(labels, scores, n_bins=10)
    assert [one.observed_rate for one in bins if one.count] == pytest.approx(observed)


def test_calibration_slope_and_intercept_match_glm_and_sklearn(window: Window) -> None:
    labels, scores, metrics = window
    logits = np.log(scores / (1.0 - scores))
    glm = sm.GLM(labels.astype(float), sm.add_constant(logits), family=sm.families.Binomial())
    intercept, slope = glm.fit().params
    assert metrics.calibration_slope == pytest.approx(slope, abs=1e-6)
    assert metrics.calibration_intercept == pytest.approx(intercept, abs=1e-6)
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logits[:, None], labels)
    assert metrics.calibration_slope == pytest.approx(sk.coef_[0, 0], abs=1e-4)
    assert metrics.calibration_intercept == pytest.approx(sk.intercept_[0], abs=1e-4)


# -- AUROC intervals ----------------------------------------------------------------------------


def test_delong_and_bootstrap_intervals_agree() -> None:
    labels, scores = calibrated_window(seed=3, n=2000)
    delong = binary_metrics(labels, scores, THRESHOLD).auroc
    bootstrap = binary_metrics(
        labels, scores, THRESHOLD, PerformanceConfig(auroc_ci="bootstrap", n_bootstrap=2000)
    ).auroc
    assert delong is not None and bootstrap is not None
    assert bootstrap.method == "bootstrap"
    assert bootstrap.estimate == delong.estimate
    delong_width, bootstrap_width = delong.upper - delong.lower, bootstrap.upper - bootstrap.lower
    assert bootstrap_width == pytest.approx(delong_width, rel=0.1)
    assert bootstrap.lower == pytest.approx(delong.lower, abs=0.01)
    assert bootstrap.upper == pytest.approx(delong.upper, abs=0.01)


def test_vectorised_bootstrap_matches_a_naive_resampling_loop() -> None:
    """Our counting bootstrap and resample-then-roc_auc_score must have the same distribution."""
    labels, scores = calibrated_window(seed=4, n=600)
    scores = np.round(scores, 2)  # ties, which the counting trick must score as one half
    positives, negatives = scores[labels], scores[~labels]
    rng = np.random.default_rng(5)
    naive = np.array(
        [
            roc_auc_score(
                np.r_[np.ones(positives.size), np.zeros(negatives.size)],
                np.r_[rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)],
            )
            for _ in range(1000)
        ]
    )
    config = PerformanceConfig(auroc_ci="bootstrap", n_bootstrap=1000)
    ours = binary_metrics(labels, scores, THRESHOLD, config).auroc
    assert ours is not None
    naive_lower, naive_upper = np.quantile(naive, [0.025, 0.975])
    assert ours.lower == pytest.approx(naive_lower, abs=0.006)
    assert ours.upper == pytest.approx(naive_upper, abs=0.006)


def test_bootstrap_is_seeded() -> None:
    labels, scores = calibrated_window(seed=6, n=500)
    same = [
        binary_metrics(labels, scores, THRESHOLD, PerformanceConfig(auroc_ci="bootstrap", seed=s))
        for s in (7, 7, 8)
    ]
    assert same[0].auroc == same[1].auroc
    assert same[0].auroc != same[2].auroc


@pytest.mark.parametrize(("method", "floor"), [("delong", 0.91), ("bootstrap", 0.90)])
def test_auroc_interval_covers_the_true_auroc_about_95_percent_of_the_time(
    method: AurocMethod, floor: float
) -> None:
    separation = 1.2
    true_auroc = float(norm.cdf(separation / math.sqrt(2.0)))
    config = PerformanceConfig(auroc_ci=method, n_bootstrap=500)
    covered = 0
    for seed in range(COVERAGE_SAMPLES):
        labels, scores = binormal_window(seed, n_positive=60, n_negative=140, separation=separation)
        auroc = binary_metrics(labels, scores, THRESHOLD, config).auroc
        assert auroc is not None
        covered += auroc.lower <= true_auroc <= auroc.upper
    assert floor <= covered / COVERAGE_SAMPLES <= 0.98


# -- calibration in both directions -------------------------------------------------------------


def test_calibrated_scores_give_slope_one_intercept_zero_and_small_ece(window: Window) -> None:
    _, _, metrics = window
    assert metrics.calibration_slope == pytest.approx(1.0, abs=0.1)
    assert metrics.calibration_intercept == pytest.approx(0.0, abs=0.1)
    assert metrics.ece is not None and metrics.ece < 0.03


def test_overconfident_scores_are_detected() -> None:
    labels, scores = calibrated_window(seed=1)
    logits = np.log(scores / (1.0 - scores))
    metrics = binary_metrics(labels, sigmoid(2.0 * logits), THRESHOLD)
    assert metrics.calibration_slope == pytest.approx(0.5, abs=0.05)
    assert metrics.ece is not None and metrics.ece > 0.05


def test_scores_too_high_overall_are_detected() -> None:
    labels, scores = calibrated_window(seed=1)
    logits = np.log(scores / (1.0 - scores))
    metrics = binary_metrics(labels, sigmoid(logits + 1.0), THRESHOLD)
    assert metrics.calibration_intercept == pytest.approx(-1.0, abs=0.1)
    assert metrics.calibration_slope == pytest.approx(1.0, abs=0.1)
    assert metrics.ece is not None and metrics.ece > 0.1
    assert metrics.brier is not None
    calibrated_brier = binary_metrics(labels, scores, THRESHOLD).brier
    assert calibrated_brier is not None and metrics.brier > calibrated_brier


# -- guards: never a made-up number -------------------------------------------------------------


def test_few_positives_make_auroc_sensitivity_and_slope_unavailable() -> None:
    labels, scores = binormal_window(seed=0, n_positive=3, n_negative=300, separation=1.0)
    metrics = binary_metrics(labels, scores, THRESHOLD)
    assert metrics.auroc is None
    assert metrics.unavailable["auroc"] == "AUROC: 3 positive cases, at least 10 needed"
    assert metrics.sensitivity is None
    assert metrics.unavailable["sensitivity"] == "sensitivity: 3 positive cases, at least 10 needed"
    assert metrics.calibration_slope is None and metrics.calibration_intercept is None
    assert "3 positive cases" in metrics.unavailable["calibration_slope"]
    assert metrics.specificity is not None and metrics.brier is not None
    assert metrics.counts.positives == 3
    assert set(metrics.unavailable) == {
        "auroc",
        "sensitivity",
        "calibration_slope",
        "calibration_intercept",
    } | ({"ppv"} if metrics.counts.tp + metrics.counts.fp < 10 else set())


def test_small_window_reports_counts_and_reasons_only() -> None:
    labels, scores = calibrated_window(seed=0, n=20)
    metrics = binary_metrics(labels, scores, THRESHOLD)
    assert metrics.counts.n == 20
    assert metrics.prevalence is None and metrics.brier is None and metrics.ece is None
    assert metrics.reliability == ()
    assert metrics.unavailable["brier"] == "Brier score: 20 cases, at least 30 needed"
    assert metrics.unavailable["ece"] == "ECE: 20 cases, at least 100 needed"
    assert (
        metrics.unavailable["reliability"] == "reliability diagram: 20 cases, at least 100 needed"
    )


def test_few_predicted_positives_make_ppv_unavailable() -> None:
    labels, scores = calibrated_window(seed=0, n=500)
    metrics = binary_metrics(labels, scores, threshold=float(np.sort(scores)[-4]))
    assert metrics.counts.tp + metrics.counts.fp == 4
    assert metrics.ppv is None
    assert metrics.unavailable["ppv"] == "PPV: 4 cases predicted positive, at least 10 needed"
    assert metrics.npv is not None


def test_one_class_window() -> None:
    scores = np.random.default_rng(0).random(400)
    metrics = binary_metrics(np.zeros(400, dtype=int), scores, THRESHOLD)
    assert metrics.auroc is None and metrics.sensitivity is None
    assert metrics.unavailable["auroc"] == "AUROC: 0 positive cases, at least 10 needed"
    assert metrics.calibration_slope is None
    assert metrics.specificity is not None
    assert metrics.specificity.estimate == pytest.approx(np.mean(scores < THRESHOLD))
    assert metrics.prevalence is not None and metrics.prevalence.estimate == 0.0
    assert metrics.ece is not None  # the scores are wrong by their mean: that is measurable


def test_empty_window() -> None:
    metrics = binary_metrics([], [], THRESHOLD)
    assert metrics.counts.n == 0
    assert metrics.auroc is None and metrics.prevalence is None and metrics.brier is None
    assert "0 cases" in metrics.unavailable["prevalence"]


def test_all_scores_equal() -> None:
    labels = np.arange(200) % 4 == 0
    metrics = binary_metrics(labels, np.full(200, 0.25), THRESHOLD)
    assert metrics.auroc is not None and metrics.auroc.estimate == 0.5
    assert metrics.calibration_slope is None
    assert "all scores are equal" in metrics.unavailable["calibration_slope"]


def test_separated_classes_have_no_calibration_slope() -> None:
    labels = np.arange(200) < 100
    scores = np.where(labels, 0.9, 0.1) + np.linspace(-0.05, 0.05, 200)
    metrics = binary_metrics(labels, scores, THRESHOLD)
    assert metrics.auroc is not None and metrics.auroc.estimate == 1.0
    assert metrics.calibration_slope is None
    assert "separate the classes" in metrics.unavailable["calibration_slope"]


@pytest.mark.parametrize(
    ("labels", "scores", "threshold"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], 0.5),
        ([0, 1, 1], [0.1, 0.2, 1.3], 0.5),
        ([0, 1, 1], [0.1, float("nan"), 0.3], 0.5),
        ([0, 1], [0.1, 0.2, 0.3], 0.5),
        ([0, 1, 1], [0.1, 0.2, 0.3], 1.5),
        ([[0, 1]], [[0.1, 0.2]], 0.5),
    ],
)
def test_invalid_input_is_refused(labels: list[int], scores: list[float], threshold: float) -> None:
    with pytest.raises(InvalidInputError):
        binary_metrics(labels, scores, threshold)
    assert issubclass(InvalidInputError, PerformanceError)
    assert issubclass(InvalidInputError, ValueError)


# -- config -------------------------------------------------------------------------------------


def test_config_is_frozen_strict_and_fingerprinted() -> None:
    config = PerformanceConfig()
    assert config.fingerprint() == PerformanceConfig().fingerprint()
    assert config.fingerprint() != PerformanceConfig(ece_bins=15).fingerprint()
    with pytest.raises(ValidationError):
        PerformanceConfig(confidence_level=1.0)
    with pytest.raises(ValidationError):
        PerformanceConfig(min_cases=5, typo=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        config.seed = 3  # type: ignore[misc]
    labels, scores = calibrated_window(seed=0, n=200)
    assert binary_metrics(labels, scores, THRESHOLD, config).config_fingerprint == (
        config.fingerprint()
    )


def test_lower_confidence_level_gives_narrower_intervals(window: Window) -> None:
    labels, scores, wide = window
    narrow = binary_metrics(labels, scores, THRESHOLD, PerformanceConfig(confidence_level=0.8))
    for name in ("auroc", "sensitivity", "specificity", "ppv", "npv"):
        wide_interval, narrow_interval = getattr(wide, name), getattr(narrow, name)
        assert narrow_interval.upper - narrow_interval.lower < (
            wide_interval.upper - wide_interval.lower
        )


# -- properties ---------------------------------------------------------------------------------

LOW_MINIMUMS = PerformanceConfig(
    min_cases=1,
    min_positives=2,
    min_negatives=2,
    min_predicted=1,
    min_calibration_cases=1,
    n_bootstrap=200,
)


@settings(max_examples=60, deadline=None)
@given(
    cases=st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0])),
        min_size=4,
        max_size=60,
    ),
    method=st.sampled_from(["delong", "bootstrap"]),
)
def test_auroc_and_intervals_are_well_formed(cases: list[tuple[bool, float]], method: str) -> None:
    labels = np.array([label for label, _ in cases])
    scores = np.array([score for _, score in cases])
    config = LOW_MINIMUMS.model_copy(update={"auroc_ci": method})
    metrics = binary_metrics(labels, scores, THRESHOLD, config)
    auroc = metrics.auroc
    if labels.sum() < 2 or (~labels).sum() < 2:
        assert auroc is None and "auroc" in metrics.unavailable
        return
    assert auroc is not None
    assert 0.0 <= auroc.lower <= auroc.upper <= 1.0
    assert auroc.estimate == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    if method == "delong":
        assert auroc.lower <= auroc.estimate <= auroc.upper
    for name in ("prevalence", "sensitivity", "specificity", "ppv", "npv"):
        interval = getattr(metrics, name)
        if interval is not None:
            assert 0.0 <= interval.lower <= interval.estimate <= interval.upper <= 1.0
    assert metrics.ece is not None and 0.0 <= metrics.ece <= 1.0


# -- subgroups ----------------------------------------------------------------------------------


def test_subgroups_match_metrics_on_the_subset_and_guard_small_groups() -> None:
    labels, scores = calibrated_window(seed=9, n=1000)
    rng = np.random.default_rng(9)
    sex = list(rng.choice(["F", "M"], size=1000))
    manufacturer: list[str | None] = list(rng.choice(["GE", "Siemens"], size=1000))
    for i in range(0, 1000, 50):
        manufacturer[i] = None  # 20 cases without a manufacturer
    manufacturer[1] = "Agfa"
    config = PerformanceConfig(min_subgroup_count=30)
    result = subgroup_metrics(
        labels, scores, THRESHOLD, {"sex": sex, "manufacturer": manufacturer}, config
    )
    assert [(one.field, one.value) for one in result] == [
        ("sex", "F"),
        ("sex", "M"),
        ("manufacturer", "Agfa"),
        ("manufacturer", "GE"),
        ("manufacturer", "Siemens"),
        ("manufacturer", None),
    ]
    assert sum(one.n for one in result[:2]) == 1000
    assert sum(one.n for one in result[2:]) == 1000
    female = np.array(sex) == "F"
    assert result[0].metrics == binary_metrics(labels[female], scores[female], THRESHOLD, config)
    agfa, missing = result[2], result[5]
    assert agfa.n == 1 and agfa.metrics is None
    assert agfa.unavailable_reason == "manufacturer=Agfa: 1 cases, at least 30 needed"
    assert missing.n == 20 and missing.metrics is None
    assert missing.unavailable_reason == "manufacturer missing: 20 cases, at least 30 needed"


def test_a_large_subgroup_still_guards_each_metric() -> None:
    labels, scores = binormal_window(seed=0, n_positive=5, n_negative=200, separation=1.0)
    [only] = subgroup_metrics(labels, scores, THRESHOLD, {"modality": ["DX"] * 205})
    assert only.metrics is not None and only.unavailable_reason is None
    assert only.metrics.auroc is None
    assert only.metrics.unavailable["auroc"] == "AUROC: 5 positive cases, at least 10 needed"


def test_subgroup_fields_must_have_one_string_per_case() -> None:
    labels, scores = calibrated_window(seed=0, n=10)
    with pytest.raises(InvalidInputError, match="9 values for 10 cases"):
        subgroup_metrics(labels, scores, THRESHOLD, {"sex": ["F"] * 9})
    with pytest.raises(InvalidInputError, match="strings or None"):
        subgroup_metrics(labels, scores, THRESHOLD, {"age": [40] * 10})  # type: ignore[list-item]
