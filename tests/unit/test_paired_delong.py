"""Paired DeLong and the PCCP non-inferiority test, against independent computations and
tested both ways (nominal rate under the null, detection of a real difference)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import binom, norm
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from monitor.performance._auroc import delong, paired_delong
from pccp.criteria import non_inferiority


def two_models(
    rng: np.random.Generator, n: int, gap_a: float, gap_b: float, shared: float = 0.7
) -> tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]:
    """Truth (30% positive) and two scorers whose noise shares a ``shared`` component: like a
    champion and a candidate that find the same studies hard."""
    positive = rng.random(n) < 0.3
    common = rng.standard_normal(n)
    noise_a = shared * common + np.sqrt(1 - shared**2) * rng.standard_normal(n)
    noise_b = shared * common + np.sqrt(1 - shared**2) * rng.standard_normal(n)
    return positive, gap_a * positive + noise_a, gap_b * positive + noise_b


def brute_force_components(
    positive: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """V10 and V01 from every (positive, negative) pair: the definition, O(m k)."""
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return wins.mean(axis=1), wins.mean(axis=0)


def test_the_variance_matches_the_definition_from_all_pairs_ties_included() -> None:
    rng = np.random.default_rng(1)
    positive, a, b = two_models(rng, 300, 1.0, 1.4)
    a, b = np.round(a, 1), np.round(b, 1)  # many ties
    v10_a, v01_a = brute_force_components(positive, a)
    v10_b, v01_b = brute_force_components(positive, b)
    m, k = v10_a.size, v01_a.size
    expected = (
        np.var(v10_b - v10_a, ddof=1) / m + np.var(v01_b - v01_a, ddof=1) / k
    )  # var(X - Y) = var X + var Y - 2 cov, per class
    paired = paired_delong(positive, a, b)
    assert paired.auroc_a == pytest.approx(roc_auc_score(positive, a))
    assert paired.auroc_b == pytest.approx(roc_auc_score(positive, b))
    assert paired.variance == pytest.approx(expected, rel=1e-12)


def test_the_standard_error_agrees_with_a_paired_stratified_bootstrap() -> None:
    rng = np.random.default_rng(2)
    positive, a, b = two_models(rng, 400, 1.0, 1.3)
    pos_idx, neg_idx = np.flatnonzero(positive), np.flatnonzero(~positive)
    differences = []
    for _ in range(1500):
        cases = np.concatenate(
            [rng.choice(pos_idx, pos_idx.size), rng.choice(neg_idx, neg_idx.size)]
        )
        truth = positive[cases]
        differences.append(roc_auc_score(truth, b[cases]) - roc_auc_score(truth, a[cases]))
    paired = paired_delong(positive, a, b)
    assert np.sqrt(paired.variance) == pytest.approx(np.std(differences, ddof=1), rel=0.12)


def test_pairing_shrinks_the_variance_of_correlated_models() -> None:
    rng = np.random.default_rng(3)
    positive, a, b = two_models(rng, 400, 1.2, 1.2, shared=0.9)
    paired = paired_delong(positive, a, b)
    # As if the two AUROCs came from independent samples: the sum of their variances.
    independent = delong(a[positive], a[~positive])[1] + delong(b[positive], b[~positive])[1]
    assert paired.variance < 0.4 * independent


def test_equal_models_are_called_different_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(4)
    runs, rejections = 400, 0
    for _ in range(runs):
        positive, a, b = two_models(rng, 200, 1.2, 1.2)
        paired = paired_delong(positive, a, b)
        z = paired.difference / np.sqrt(paired.variance)
        rejections += bool(2 * norm.sf(abs(z)) < 0.05)
    # Two-sided 5% test: the count must lie in the central 99.9% of Binomial(400, 0.05).
    low, high = binom.ppf([0.0005, 0.9995], runs, 0.05)
    assert low <= rejections <= high, rejections


def test_a_real_difference_is_detected() -> None:
    rng = np.random.default_rng(5)
    detected = 0
    for _ in range(100):
        positive, a, b = two_models(rng, 400, 0.8, 1.6)
        paired = paired_delong(positive, a, b)
        detected += bool(paired.difference / np.sqrt(paired.variance) > norm.ppf(0.975))
    assert detected >= 95


def test_non_inferiority_passes_an_equal_candidate_and_fails_a_worse_one() -> None:
    rng = np.random.default_rng(6)
    positive, champion, equal = two_models(rng, 600, 1.4, 1.4, shared=0.9)
    result = non_inferiority(positive, champion, equal, margin=0.05)
    assert result.passed and result.lower_bound > -0.05
    assert result.p_value == pytest.approx(
        norm.sf((result.difference + 0.05) / result.standard_error)
    )
    _, _, worse = two_models(np.random.default_rng(6), 600, 1.4, 0.7, shared=0.9)
    failed = non_inferiority(positive, champion, worse, margin=0.05)
    assert not failed.passed and failed.difference < -0.05


def test_non_inferiority_holds_its_level_at_the_margin() -> None:
    """A candidate exactly ``margin`` worse passes at most ``alpha`` of the time."""
    rng = np.random.default_rng(7)
    runs, passes = 300, 0
    for _ in range(runs):
        positive = rng.random(300) < 0.3
        # AUROC of gap g with unit noise is Phi(g / sqrt 2): gaps chosen for 0.80 and 0.77.
        gap_champion = np.sqrt(2) * norm.ppf(0.80)
        gap_candidate = np.sqrt(2) * norm.ppf(0.77)
        common = rng.standard_normal(300)
        champion = gap_champion * positive + 0.8 * common + 0.6 * rng.standard_normal(300)
        candidate = gap_candidate * positive + 0.8 * common + 0.6 * rng.standard_normal(300)
        passes += non_inferiority(positive, champion, candidate, margin=0.03).passed
    assert passes <= binom.ppf(0.999, runs, 0.025), passes


def test_identical_models_and_bad_inputs() -> None:
    rng = np.random.default_rng(8)
    positive, a, _ = two_models(rng, 100, 1.0, 1.0)
    same = non_inferiority(positive, a, a.copy(), margin=0.0)
    assert same.standard_error == 0 and not same.passed  # d = 0 is not > -0
    assert non_inferiority(positive, a, a.copy(), margin=0.01).passed
    with pytest.raises(ValueError, match="one value per case"):
        paired_delong(positive, a, a[:-1])
    with pytest.raises(ValueError, match="alpha"):
        non_inferiority(positive, a, a, margin=0.01, alpha=0.7)
