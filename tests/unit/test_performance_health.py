"""The health score: standardisation, weights learned from labelled windows, default weights,
its band, and its level on unchanged and shifted streams.

Seeded: every statistical test draws from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from monitor.drift.sequential import Z_CAP
from monitor.performance.health import (
    HealthConfig,
    LabelledWindow,
    Moments,
    health_of,
    learn_weights,
    score,
    standardise,
)

DETECTORS = ("ks_pixels", "chi2_metadata", "embedding_mmd")
MOMENTS = {"ks_pixels": Moments(0.1, 0.02), "chi2_metadata": Moments(0.05, 0.01)}
MOMENTS |= {"embedding_mmd": Moments(0.002, 0.001)}
CONFIG = HealthConfig(n_bootstrap=100)


def _history(
    rng: np.random.Generator, windows: int, slope: float = 0.02, noise: float = 0.01
) -> list[LabelledWindow]:
    """Windows where only ks_pixels' z lowers the AUROC (``slope`` per spread)."""
    found = []
    for _ in range(windows):
        z = {d: float(rng.normal()) for d in DETECTORS}
        z["ks_pixels"] = float(abs(rng.normal()) * 3)
        auroc = 0.9 - slope * z["ks_pixels"] + rng.normal(0.0, noise)
        found.append(LabelledWindow(z, auroc, noise**2))
    return found


def _effects(z: dict[str, float]) -> dict[str, float]:
    return {d: MOMENTS[d].mean + z[d] * MOMENTS[d].sd for d in z}


def test_standardise_uses_the_learned_moments_and_caps() -> None:
    z = standardise({"ks_pixels": 0.16, "chi2_metadata": 1.0, "online": 3.0}, MOMENTS)
    assert z["ks_pixels"] == pytest.approx(3.0)
    assert z["chi2_metadata"] == Z_CAP
    assert z["online"] is None


def test_a_detector_without_moments_is_listed_with_no_weight() -> None:
    result = score({"ks_pixels": 0.1, "online": 5.0}, MOMENTS, [], CONFIG)
    (online,) = [c for c in result.components if c.detector == "online"]
    assert online.z is None and online.weight == 0.0 and online.note
    assert result.weights.weights == {"ks_pixels": 1.0}


def test_weights_learned_recover_the_planted_relation() -> None:
    weights = learn_weights(_history(np.random.default_rng(0), 60), DETECTORS, CONFIG)
    assert weights.source == "learned" and weights.labelled_windows == 60
    # Shrunk towards equal weights (ridge 0.1), the predictive detector still carries most.
    assert weights.weights["ks_pixels"] > 0.7
    assert weights.weights["ks_pixels"] == max(weights.weights.values())
    assert weights.auroc_per_spread["ks_pixels"] == pytest.approx(0.02, rel=0.15)
    assert sum(weights.weights.values()) == pytest.approx(1.0)


def test_default_weights_without_enough_labelled_windows() -> None:
    weights = learn_weights(_history(np.random.default_rng(1), 5), DETECTORS, CONFIG)
    assert weights.source == "default" and "fewer than the 8" in weights.reason
    assert list(weights.weights.values()) == pytest.approx([1 / 3] * 3)


def test_default_weights_when_no_detector_predicts_the_drop() -> None:
    """The only detector that moves goes with a *higher* AUROC: nothing predicts a drop."""
    rng = np.random.default_rng(2)
    history = [
        LabelledWindow({"ks_pixels": z, "chi2_metadata": 0.0}, 0.9 + 0.02 * z, 1e-4)
        for z in rng.normal(size=40)
    ]
    weights = learn_weights(history, DETECTORS, CONFIG)
    assert weights.source == "default" and "predicted" in weights.reason


def test_the_band_covers_the_planted_score() -> None:
    """Two detectors lower the AUROC, 0.02 and 0.01 per spread (true weights 2/3 and 1/3), a
    third does not. A window at z = (3, 3, 3) has true index 3 (health 62.5); over 40 seeded
    histories of 30 windows the 90% band covers it in at least 80%."""
    window = dict.fromkeys(DETECTORS, 3.0)
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        history = []
        for _ in range(30):
            z = {d: float(abs(rng.normal()) * 3) for d in DETECTORS}
            auroc = 0.9 - 0.02 * z["ks_pixels"] - 0.01 * z["chi2_metadata"]
            history.append(LabelledWindow(z, auroc + rng.normal(0.0, 0.02), 0.02**2))
        result = score(_effects(window), MOMENTS, history, CONFIG)
        assert result.lower is not None and result.upper is not None
        covered += result.lower <= health_of(3.0) <= result.upper
    assert covered >= 32


def test_an_unchanged_stream_scores_near_the_reference_level() -> None:
    rng = np.random.default_rng(3)
    history = _history(rng, 30)
    healths = []
    for _ in range(200):
        window = {d: float(rng.normal()) for d in DETECTORS}
        result = score(_effects(window), MOMENTS, history, CONFIG)
        assert result.health is not None
        healths.append(result.health)
    assert np.median(healths) >= 95.0
    assert np.mean(np.asarray(healths) >= 75.0) >= 0.95


def test_a_shift_lowers_the_score_and_predicts_the_drop() -> None:
    history = _history(np.random.default_rng(4), 40)
    quiet = score(_effects(dict.fromkeys(DETECTORS, 0.0)), MOMENTS, history, CONFIG)
    shifted = {"ks_pixels": 5.0, "chi2_metadata": 0.0, "embedding_mmd": 0.0}
    moved = score(_effects(shifted), MOMENTS, history, CONFIG)
    assert quiet.health == 100.0
    assert moved.health is not None and moved.health < 50.0
    assert moved.upper is not None and moved.upper < 100.0
    assert moved.expected_auroc_drop == pytest.approx(0.1, rel=0.2)


def test_default_weights_still_move_on_a_shift_and_band_by_detector() -> None:
    shifted = {"ks_pixels": 6.0, "chi2_metadata": 0.0, "embedding_mmd": 0.0}
    result = score(_effects(shifted), MOMENTS, [], CONFIG)
    assert result.weights.source == "default" and result.expected_auroc_drop is None
    assert result.health == pytest.approx(health_of(2.0))
    assert result.lower is not None and result.upper is not None
    assert result.lower < result.health < result.upper


def test_no_score_without_any_standardised_detector() -> None:
    result = score({"online": 1.0}, {}, [], CONFIG)
    assert result.health is None and result.lower is None
    assert result.weights.reason == "no detector has learned moments"
