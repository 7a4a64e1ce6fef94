"""Our ``mmd`` and ``ks`` detectors against alibi-detect 0.13 on the same seeded data.

alibi-detect is called directly here (not through ``monitor.drift.alibi_backend``) so that the
oracle does not share code with what it checks.

* MMD: our detector standardises with the reference moments; alibi gets the same standardised
  arrays. Same estimator and bandwidth, so MMD^2 agrees to 1e-5 (measured: ~1e-10; alibi keeps
  sigma in float32). Seeding torch's global generator with our ``config.seed`` before alibi's
  ``predict`` makes it draw our permutations, so the p-values then agree exactly up to alibi's
  float32 permuted statistics (at most one near-tie, 1 / n_permutations). With independent
  permutations they must still agree within Monte Carlo error.
* KS: both call ``scipy.stats.ks_2samp`` per feature and Bonferroni-correct over features, but
  alibi asks for the asymptotic p-value (``mode='asymp'``) where we take scipy's default, the
  exact one below 10,000 rows. So the KS statistics agree exactly (to alibi's float32), alibi's
  p-values equal scipy's asymptotic ones, and ours differ from them by the asymptotic
  approximation only: a few per cent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from alibi_detect.cd import KSDrift, MMDDrift
from scipy.stats import ks_2samp

from monitor.drift.ks import KSConfig, KSDetector
from monitor.drift.mmd import MMDConfig, MMDDetector
from tests.alibi.samples import matrix, normal_pair, standardise

# (seed, reference rows, window rows, features, shift in sd): null and shifted windows, p-values
# spread over (0, 1) so that agreement on them means something.
MMD_CASES = [
    (0, 200, 50, 4, 0.0),
    (1, 200, 50, 4, 0.2),
    (2, 300, 100, 16, 0.0),
    (3, 300, 100, 16, 0.1),
    (4, 500, 60, 8, 0.15),
    (5, 500, 200, 2, 0.1),
    (6, 150, 150, 32, 0.05),
    (7, 400, 30, 16, 0.3),
    (8, 1000, 100, 16, 0.0),
    (9, 1000, 100, 16, 0.2),
]


def alibi_mmd(
    reference: np.ndarray, window: np.ndarray, n_permutations: int, torch_seed: int
) -> dict[str, float]:
    """alibi's MMDDrift (PyTorch backend, its defaults) on already standardised samples."""
    detector = MMDDrift(reference, backend="pytorch", n_permutations=n_permutations, device="cpu")
    torch.manual_seed(torch_seed)
    data = detector.predict(window)["data"]
    return {key: float(data[key]) for key in ("distance", "p_val", "is_drift")}


@pytest.mark.parametrize(("seed", "n_ref", "n_window", "n_features", "shift"), MMD_CASES)
def test_mmd_equals_alibi_with_the_same_permutations(
    seed: int, n_ref: int, n_window: int, n_features: int, shift: float
) -> None:
    reference, window = normal_pair(seed, n_ref, n_window, n_features, shift)
    config = MMDConfig(seed=seed)
    ours = MMDDetector(config).fit(matrix(reference)).score(matrix(window))
    theirs = alibi_mmd(*standardise(reference, window), config.n_permutations, torch_seed=seed)

    assert ours.statistic == pytest.approx(theirs["distance"], abs=1e-5)
    assert ours.p_value is not None
    assert abs(ours.p_value - theirs["p_val"]) <= 1.0 / config.n_permutations + 1e-6
    assert ours.is_drift == bool(theirs["is_drift"])


def test_mmd_p_values_agree_within_monte_carlo_error_with_other_permutations() -> None:
    """Independent permutations: p-values differ only by Monte Carlo error (4 sd here)."""
    n_permutations = 1000
    for seed, shift in [(20, 0.0), (21, 0.12), (22, 0.18)]:
        reference, window = normal_pair(seed, 300, 80, 8, shift)
        config = MMDConfig(seed=seed, n_permutations=n_permutations)
        ours = MMDDetector(config).fit(matrix(reference)).score(matrix(window))
        theirs = alibi_mmd(*standardise(reference, window), n_permutations, torch_seed=seed + 100)
        assert ours.p_value is not None
        p = (ours.p_value + theirs["p_val"]) / 2
        tolerance = 4 * math.sqrt(2 * p * (1 - p) / n_permutations) + 2.0 / n_permutations
        assert abs(ours.p_value - theirs["p_val"]) <= tolerance, (seed, ours.p_value, theirs)


def test_mmd_decisions_agree_on_null_and_shifted_windows() -> None:
    """Forty seeded windows at the production size ratio: identical decisions on every one,
    and both flag the shifted windows."""
    decisions = []
    for seed in range(40):
        shift = 0.25 if seed % 2 else 0.0
        reference, window = normal_pair(100 + seed, 500, 100, 16, shift)
        config = MMDConfig(seed=seed)
        ours = MMDDetector(config).fit(matrix(reference)).score(matrix(window))
        theirs = alibi_mmd(*standardise(reference, window), config.n_permutations, seed)
        assert ours.is_drift == bool(theirs["is_drift"]), seed
        decisions.append(ours.is_drift)
    assert sum(decisions[1::2]) >= 18  # shifted: 0.25 sd on 16 features is easy at n = 100
    assert sum(decisions[0::2]) <= 3  # null: 5% nominal, 20 windows


KS_CASES = [
    (0, 1000, 100, 16, 0.0),
    (1, 1000, 100, 16, 0.15),
    (2, 1000, 500, 16, 0.1),
    (3, 500, 50, 8, 0.3),
    (4, 2000, 200, 4, 0.2),
    (5, 300, 300, 16, 0.05),
]


@pytest.mark.parametrize(("seed", "n_ref", "n_window", "n_features", "shift"), KS_CASES)
def test_ks_bonferroni_matches_alibi(
    seed: int, n_ref: int, n_window: int, n_features: int, shift: float
) -> None:
    reference, window = normal_pair(seed, n_ref, n_window, n_features, shift)
    # No effect floor: alibi has none, and the comparison is of the statistical decision.
    ours = (
        KSDetector(KSConfig(correction="bonferroni", min_effect_size=0.0))
        .fit(matrix(reference))
        .score(matrix(window))
    )
    data = KSDrift(reference, p_val=0.05, correction="bonferroni").predict(window)["data"]
    alibi_raw = np.asarray(data["p_val"], dtype=np.float64)
    alibi_adjusted = np.minimum(1.0, alibi_raw * n_features)
    by_feature = {item.feature: item for item in ours.attributions}

    for column in range(n_features):
        ours_feature = by_feature[f"f{column}"]
        assert ours_feature.p_value is not None
        assert ours_feature.statistic == pytest.approx(float(data["distance"][column]), abs=1e-6)
        asymptotic = ks_2samp(reference[:, column], window[:, column], method="asymp").pvalue
        assert alibi_raw[column] == pytest.approx(asymptotic, rel=1e-6, abs=1e-12)  # float32
        # Exact vs asymptotic Kolmogorov distribution: a few per cent apart at these sizes.
        assert ours_feature.p_value == pytest.approx(alibi_adjusted[column], rel=0.1, abs=0.03)
    assert ours.is_drift == bool(data["is_drift"])
    assert data["threshold"] == pytest.approx(0.05 / n_features)
