"""The MMD drift detector: exact statistic, calibrated p-values, power, and its contract.

Every statistical test is seeded: the repetitions draw from ``np.random.default_rng(seed)`` for
seeds 0..k-1, so each run of the suite sees the same samples and the thresholds cannot flake.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from pydantic import ValidationError
from scipy.stats import binomtest, ks_2samp

from monitor.drift.base import (
    DETECTORS,
    FeatureMatrix,
    InsufficientDataError,
    NotFittedError,
)
from monitor.drift.mmd import MMDConfig, MMDDetector


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run this module's small kernel products on one thread, then restore the setting.

    They gain nothing from intra-op threads, and on a busy 2-core machine contending threads
    made the module four times slower (13 s against 47 s).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def names_for(n_features: int) -> tuple[str, ...]:
    return tuple(f"f{i}" for i in range(n_features))


def matrix(values: NDArray[np.float64]) -> FeatureMatrix:
    return FeatureMatrix(names_for(values.shape[1]), values)


def normal_pair(
    seed: int, n_ref: int, n_window: int, n_features: int, shift: float = 0.0
) -> tuple[FeatureMatrix, FeatureMatrix]:
    """A standard-normal reference and a window whose every feature is shifted by ``shift``."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(n_ref, n_features))
    window = rng.normal(size=(n_window, n_features)) + shift
    return matrix(reference), matrix(window)


def detects(reference: FeatureMatrix, window: FeatureMatrix) -> bool:
    return MMDDetector().fit(reference).score(window).is_drift


# -- independent implementations, written from the definitions rather than from mmd.py ----------


def numpy_kernel(
    reference: NDArray[np.float64], window: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Pooled Gaussian kernel matrix after standardising with the reference moments.

    The bandwidth is the median heuristic alibi-detect uses: sigma^2 is half the lower median
    of the squared distances between distinct reference rows.
    """
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    scaled_ref, scaled_window = (reference - mean) / std, (window - mean) / std
    pooled = np.vstack([scaled_ref, scaled_window])
    squared = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(axis=2)
    n = len(scaled_ref)
    pairs = np.sort(squared[:n, :n][np.triu_indices(n, k=1)])
    sigma2 = pairs[(len(pairs) - 1) // 2] / 2.0
    return np.asarray(np.exp(-squared / (2.0 * sigma2)), dtype=np.float64)


def numpy_mmd2(kernel: NDArray[np.float64], n_ref: int) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3), by explicit sums over i != j."""
    n_window = len(kernel) - n_ref
    k_xx, k_yy = kernel[:n_ref, :n_ref], kernel[n_ref:, n_ref:]
    k_xy = kernel[:n_ref, n_ref:]
    within_ref = (k_xx.sum() - np.trace(k_xx)) / (n_ref * (n_ref - 1))
    within_window = (k_yy.sum() - np.trace(k_yy)) / (n_window * (n_window - 1))
    return float(within_ref + within_window - 2.0 * k_xy.sum() / (n_ref * n_window))


def alibi_style_p_value(kernel: NDArray[np.float64], n_ref: int, n_perm: int, seed: int) -> float:
    """alibi-detect's loop: one randperm of the pooled rows per permutation, from the global
    torch generator, and p = mean(observed <= permuted)."""
    observed = numpy_mmd2(kernel, n_ref)
    permuted = []
    with torch.random.fork_rng():  # leave the global generator as other tests expect it
        torch.manual_seed(seed)
        for _ in range(n_perm):
            order = torch.randperm(len(kernel)).numpy()
            permuted.append(numpy_mmd2(kernel[np.ix_(order, order)], n_ref))
    return float(np.mean(observed <= np.array(permuted)))


# -- exactness ----------------------------------------------------------------------------------


def test_mmd2_equals_an_independent_numpy_computation() -> None:
    reference, window = normal_pair(seed=3, n_ref=80, n_window=30, n_features=4, shift=0.4)
    result = MMDDetector(MMDConfig(min_reference=10)).fit(reference).score(window)
    expected = numpy_mmd2(numpy_kernel(reference.values, window.values), n_ref=80)
    assert result.statistic == pytest.approx(expected, abs=1e-10)
    assert result.effect_size == result.statistic
    assert result.effect_size_name == "mmd2"


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_p_value_equals_the_alibi_style_permutation_loop(shift: float) -> None:
    reference, window = normal_pair(seed=5, n_ref=60, n_window=25, n_features=3, shift=shift)
    config = MMDConfig(min_reference=10, n_permutations=50, seed=11)
    result = MMDDetector(config).fit(reference).score(window)
    kernel = numpy_kernel(reference.values, window.values)
    assert result.p_value == alibi_style_p_value(kernel, n_ref=60, n_perm=50, seed=11)


def test_same_seed_gives_the_same_result() -> None:
    reference, window = normal_pair(seed=1, n_ref=300, n_window=60, n_features=5, shift=0.1)
    first = MMDDetector(MMDConfig(seed=4)).fit(reference).score(window)
    second = MMDDetector(MMDConfig(seed=4)).fit(reference).score(window)
    assert first == second
    assert first.config_fingerprint != MMDConfig(seed=5).fingerprint()


# -- calibration and power ----------------------------------------------------------------------


def test_false_alarms_on_the_same_distribution_stay_at_the_nominal_rate() -> None:
    p_values, alarms = [], 0
    for seed in range(200):
        reference, window = normal_pair(seed, 200, 100, 8)
        result = MMDDetector().fit(reference).score(window)
        p_values.append(result.p_value)
        alarms += result.is_drift
    assert alarms / 200 <= 0.09
    assert binomtest(alarms, 200, 0.05).pvalue > 0.01
    share_below_half = np.mean(np.array(p_values) < 0.5)
    assert 0.4 <= share_below_half <= 0.6


def test_detects_a_half_sd_shift_on_sixteen_features() -> None:
    hits = sum(detects(*normal_pair(seed, 1000, 100, 16, shift=0.5)) for seed in range(40))
    assert hits >= 38


def test_detects_a_fifth_sd_shift_with_a_200_row_window() -> None:
    hits = sum(detects(*normal_pair(seed, 1000, 200, 16, shift=0.2)) for seed in range(40))
    assert hits >= 32


def test_beats_bonferroni_corrected_ks_on_a_small_diffuse_shift() -> None:
    """A 0.1 sd shift on every feature: too small for any one KS test, visible jointly."""
    mmd_hits = ks_hits = 0
    for seed in range(40):
        reference, window = normal_pair(seed, 1000, 200, 16, shift=0.1)
        mmd_hits += detects(reference, window)
        smallest = min(
            ks_2samp(reference.values[:, j], window.values[:, j]).pvalue for j in range(16)
        )
        ks_hits += smallest < 0.05 / 16
    assert mmd_hits >= ks_hits + 12


def test_practical_significance_floor_suppresses_a_tiny_significant_shift() -> None:
    reference, window = normal_pair(seed=2, n_ref=2000, n_window=1000, n_features=2, shift=0.15)
    significant = MMDDetector().fit(reference).score(window)
    assert significant.is_drift
    floored = MMDDetector(MMDConfig(min_effect_size=2 * significant.statistic))
    result = floored.fit(reference).score(window)
    assert result.p_value == significant.p_value
    assert not result.is_drift


# -- attributions -------------------------------------------------------------------------------


def test_attribution_ranks_the_shifted_feature_first() -> None:
    rng = np.random.default_rng(8)
    reference, window = rng.normal(size=(500, 6)), rng.normal(size=(150, 6))
    window[:, 3] += 1.8
    result = MMDDetector().fit(matrix(reference)).score(matrix(window))
    top = result.attributions[0]
    assert top.feature == "f3"
    assert top.statistic == pytest.approx(1.8, abs=0.25)
    assert top.explanation is not None and "sd above reference" in top.explanation
    sizes = [item.effect_size for item in result.attributions]
    assert sizes == sorted(sizes, reverse=True)
    assert {item.feature for item in result.attributions} == set(names_for(6))


def test_attribution_sees_a_change_of_spread() -> None:
    rng = np.random.default_rng(9)
    reference, window = rng.normal(size=(500, 4)), rng.normal(size=(200, 4))
    window[:, 1] *= 3.0
    result = MMDDetector().fit(matrix(reference)).score(matrix(window))
    assert result.is_drift
    assert result.attributions[0].feature == "f1"


# -- data handling and the contract -------------------------------------------------------------


def test_rows_with_missing_values_are_dropped_and_counted() -> None:
    reference, window = normal_pair(seed=4, n_ref=200, n_window=80, n_features=3)
    ref_values, window_values = reference.values.copy(), window.values.copy()
    ref_values[:7, 0] = np.nan
    window_values[:10, 2] = np.nan
    window_values[10, 1] = np.inf
    detector = MMDDetector().fit(matrix(ref_values))
    result = detector.score(matrix(window_values))
    assert detector.reference_rows_dropped == 7
    assert result.n_reference == 193
    assert result.n_window == 69
    expected = MMDDetector().fit(matrix(ref_values[7:])).score(matrix(window_values[11:]))
    assert result == expected


def test_score_before_fit_raises_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        MMDDetector().score(normal_pair(0, 100, 50, 2)[1])


def test_too_small_reference_or_window_is_refused() -> None:
    reference, window = normal_pair(seed=0, n_ref=49, n_window=19, n_features=2)
    with pytest.raises(InsufficientDataError):
        MMDDetector().fit(reference)
    detector = MMDDetector().fit(normal_pair(seed=0, n_ref=50, n_window=1, n_features=2)[0])
    with pytest.raises(InsufficientDataError):
        detector.score(window)
    enough_rows = np.vstack([window.values, np.full((6, 2), np.nan)])  # 25 rows, 19 complete
    with pytest.raises(InsufficientDataError, match="19 complete rows \\(6 dropped"):
        detector.score(matrix(enough_rows))


def test_window_feature_names_must_match_the_reference() -> None:
    reference, window = normal_pair(seed=0, n_ref=100, n_window=40, n_features=3)
    detector = MMDDetector().fit(reference)
    with pytest.raises(ValueError, match="differ"):
        detector.score(FeatureMatrix(("f0", "f2", "f1"), window.values))


def test_large_reference_is_subsampled_deterministically() -> None:
    reference, window = normal_pair(seed=6, n_ref=900, n_window=50, n_features=3)
    config = MMDConfig(max_reference=300)
    first = MMDDetector(config).fit(reference).score(window)
    assert first.n_reference == 300
    assert first == MMDDetector(config).fit(reference).score(window)


def test_constant_feature_is_centred_not_divided_by_zero() -> None:
    reference, window = normal_pair(seed=7, n_ref=100, n_window=40, n_features=2)
    ref_values, window_values = reference.values.copy(), window.values.copy()
    ref_values[:, 1] = 5.0
    window_values[:, 1] = 5.0
    result = MMDDetector().fit(matrix(ref_values)).score(matrix(window_values))
    assert np.isfinite(result.statistic)
    assert not result.is_drift
    window_values[:, 1] = 5.5
    shifted = MMDDetector().fit(matrix(ref_values)).score(matrix(window_values))
    top = shifted.attributions[0]
    assert top.feature == "f1"
    assert top.statistic == pytest.approx(0.5)
    assert top.explanation is not None and "reference's constant value" in top.explanation


def test_all_identical_rows_give_p_value_one_not_rounding_noise() -> None:
    """Every permuted MMD^2 ties with the observed one; rounding must not decide the p-value."""
    result = MMDDetector().fit(matrix(np.zeros((60, 2)))).score(matrix(np.zeros((20, 2))))
    assert result.p_value == 1.0
    assert not result.is_drift


def test_config_is_validated_and_the_detector_registered() -> None:
    with pytest.raises(ValidationError):
        MMDConfig(max_reference=10, min_reference=50)
    with pytest.raises(ValidationError):
        MMDConfig(p_value_threshold=0.0)
    with pytest.raises(ValidationError):
        MMDConfig(unknown=1)  # type: ignore[call-arg]
    assert DETECTORS["mmd"] is MMDDetector
    assert MMDDetector.name == "mmd"
