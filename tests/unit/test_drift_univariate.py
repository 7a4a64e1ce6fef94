"""Multiple-testing correction, the per-feature KS detector and the model-score KS detector.

Every statistical test is seeded: the repetitions draw from ``np.random.default_rng(seed)`` for
seeds 0..199, so each run of the suite sees the same samples and the thresholds cannot flake.
With 200 repetitions at a true rate of 5%, the false-alarm share exceeds 9% with probability
about 1% (binomial), so ``<= 0.09`` tests the level without making the suite fragile.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydantic import ValidationError
from scipy.stats import binomtest, false_discovery_control, ks_2samp, wasserstein_distance

from monitor.drift.base import DETECTORS, FeatureMatrix, InsufficientDataError, NotFittedError
from monitor.drift.ks import KSConfig, KSDetector
from monitor.drift.multiple_testing import adjust
from monitor.drift.scores import ScoreKSConfig, ScoreKSDetector

REPETITIONS = 200
FALSE_ALARM_CEILING = 0.09
N_FEATURES = 8


def names_for(n_features: int) -> tuple[str, ...]:
    return tuple(f"f{i}" for i in range(n_features))


def matrix(values: NDArray[np.float64]) -> FeatureMatrix:
    return FeatureMatrix(names_for(values.shape[1]), values)


def normal_pair(
    seed: int, n_ref: int = 1000, n_window: int = 200, shifted: int | None = None
) -> tuple[FeatureMatrix, FeatureMatrix]:
    """Standard-normal reference and window; feature ``shifted`` moved by +0.5 sd if given."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(n_ref, N_FEATURES))
    window = rng.normal(size=(n_window, N_FEATURES))
    if shifted is not None:
        window[:, shifted] += 0.5
    return matrix(reference), matrix(window)


def share(outcome: Callable[[int], bool]) -> float:
    """Share of the seeded repetitions where ``outcome(seed)`` holds."""
    return sum(outcome(seed) for seed in range(REPETITIONS)) / REPETITIONS


# -- multiple testing ----------------------------------------------------------------------------


def test_bonferroni_multiplies_by_the_number_of_tests_and_caps_at_one() -> None:
    adjusted = adjust([0.001, 0.02, 0.3, 0.9], "bonferroni")
    np.testing.assert_allclose(adjusted, [0.004, 0.08, 1.0, 1.0])


def test_bh_matches_the_step_up_definition_and_scipy() -> None:
    p_values = np.array([0.04, 0.001, 0.03, 0.5, 0.012])
    k = len(p_values)
    order = np.argsort(p_values)
    stepped = p_values[order] * k / np.arange(1, k + 1)
    by_rank = np.minimum.accumulate(stepped[::-1])[::-1]
    expected = np.empty(k)
    expected[order] = np.minimum(by_rank, 1.0)
    np.testing.assert_allclose(adjust(p_values, "fdr_bh"), expected)
    np.testing.assert_allclose(adjust(p_values, "fdr_bh"), false_discovery_control(p_values))


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30))
def test_adjusted_p_values_are_valid_and_bh_never_exceeds_bonferroni(p: list[float]) -> None:
    bonferroni, bh = adjust(p, "bonferroni"), adjust(p, "fdr_bh")
    for adjusted in (bonferroni, bh):
        assert adjusted.shape == (len(p),)
        assert ((adjusted >= np.asarray(p) - 1e-12) & (adjusted <= 1.0)).all()
    assert (bh <= bonferroni + 1e-12).all()


def test_adjust_handles_no_tests_and_rejects_invalid_p_values() -> None:
    assert adjust([], "bonferroni").shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adjust([0.5, 1.2], "fdr_bh")
    with pytest.raises(ValueError, match="one-dimensional"):
        adjust([[0.5]], "bonferroni")


# -- KS: statistics against scipy ----------------------------------------------------------------


def test_ks_attributions_match_scipy_on_the_same_data() -> None:
    reference, window = normal_pair(seed=3, shifted=2)
    result = KSDetector().fit(reference).score(window)
    by_feature = {item.feature: item for item in result.attributions}
    raw_p = []
    for i, name in enumerate(reference.names):
        expected = ks_2samp(reference.values[:, i], window.values[:, i])
        effect = wasserstein_distance(reference.values[:, i], window.values[:, i]) / np.std(
            reference.values[:, i]
        )
        assert by_feature[name].statistic == pytest.approx(expected.statistic)
        assert by_feature[name].effect_size == pytest.approx(effect)
        raw_p.append(expected.pvalue)
    adjusted = np.minimum(1.0, np.array(raw_p) * N_FEATURES)
    for name, p in zip(reference.names, adjusted, strict=True):
        assert by_feature[name].p_value == pytest.approx(p)
    assert result.statistic == pytest.approx(max(a.statistic for a in result.attributions))
    assert result.p_value == pytest.approx(adjusted.min())
    assert result.effect_size_name == "wasserstein_norm"
    assert result.threshold == 0.05


def test_bh_correction_adjusts_as_scipy_does() -> None:
    reference, window = normal_pair(seed=4, shifted=1)
    result = KSDetector(KSConfig(correction="fdr_bh")).fit(reference).score(window)
    raw = [ks_2samp(reference.values[:, i], window.values[:, i]).pvalue for i in range(8)]
    by_feature = {item.feature: item.p_value for item in result.attributions}
    expected = false_discovery_control(raw)
    assert [by_feature[name] for name in reference.names] == pytest.approx(list(expected))


# -- KS: level and power -------------------------------------------------------------------------


def test_ks_false_alarm_share_stays_at_the_family_wise_level() -> None:
    """Bonferroni over 8 features, without the effect floor so the p-values alone are on trial;
    the default config's alarms are a subset of these (the floor only adds a condition)."""
    config = KSConfig(min_effect_size=0.0)

    def alarms(seed: int) -> bool:
        reference, window = normal_pair(seed)
        return KSDetector(config).fit(reference).score(window).is_drift

    false_alarms = share(alarms)
    print(f"KS bonferroni, 8 features, no effect floor: false alarms {false_alarms}")
    assert false_alarms <= FALSE_ALARM_CEILING
    assert binomtest(round(false_alarms * REPETITIONS), REPETITIONS, 0.05).pvalue > 0.01


def test_ks_detects_a_half_sd_shift_of_one_feature_and_ranks_it_first() -> None:
    def detected_and_first(seed: int) -> bool:
        reference, window = normal_pair(seed, shifted=5)
        result = KSDetector().fit(reference).score(window)
        return result.is_drift and result.attributions[0].feature == "f5"

    detection = share(detected_and_first)
    print(f"KS +0.5 sd on 1 of 8 features: detected and ranked first {detection}")
    assert detection >= 0.95


def test_a_significant_but_tiny_shift_stays_below_the_effect_floor() -> None:
    rng = np.random.default_rng(0)
    reference = matrix(rng.normal(size=(20_000, 1)))
    window = matrix(rng.normal(size=(20_000, 1)) + 0.06)
    result = KSDetector().fit(reference).score(window)
    assert result.p_value is not None and result.p_value < 0.05
    assert result.effect_size < 0.1
    assert not result.is_drift
    assert KSDetector(KSConfig(min_effect_size=0.0)).fit(reference).score(window).is_drift


def test_explanation_names_the_feature_and_its_medians() -> None:
    rng = np.random.default_rng(1)
    reference = FeatureMatrix(("KVP",), rng.normal(102, 5, size=(500, 1)))
    window = FeatureMatrix(("KVP",), rng.normal(118, 5, size=(100, 1)))
    result = KSDetector().fit(reference).score(window)
    (attribution,) = result.attributions
    assert attribution.explanation is not None
    assert attribution.explanation.startswith("KVP: median 11")
    assert "vs reference 10" in attribution.explanation
    expected = ks_2samp(reference.values[:, 0], window.values[:, 0]).statistic
    assert f"(KS {expected:.2f}, Wasserstein " in attribution.explanation


# -- KS: contract and edge cases -----------------------------------------------------------------


def test_ks_is_registered_deterministic_and_fingerprinted() -> None:
    assert DETECTORS["ks"] is KSDetector
    assert DETECTORS["score_ks"] is ScoreKSDetector
    reference, window = normal_pair(seed=7, shifted=0)
    config = KSConfig(p_value_threshold=0.01)
    first = KSDetector(config).fit(reference).score(window)
    second = KSDetector(config).fit(reference).score(window)
    assert first == second
    assert first.detector == "ks"
    assert first.config_fingerprint == config.fingerprint() != KSConfig().fingerprint()
    assert (first.n_reference, first.n_window) == (1000, 200)


def test_ks_refuses_to_score_before_fit() -> None:
    _, window = normal_pair(seed=0)
    with pytest.raises(NotFittedError):
        KSDetector().score(window)


def test_ks_size_guards() -> None:
    reference, window = normal_pair(seed=0)
    with pytest.raises(InsufficientDataError, match="reference has 49 rows"):
        KSDetector().fit(matrix(reference.values[:49]))
    fitted = KSDetector().fit(reference)
    with pytest.raises(InsufficientDataError, match="window has 19 rows"):
        fitted.score(matrix(window.values[:19]))
    with pytest.raises(InsufficientDataError, match="window has 0 rows"):
        fitted.score(matrix(np.empty((0, N_FEATURES))))
    with pytest.raises(ValueError, match="differ"):
        fitted.score(FeatureMatrix(names_for(N_FEATURES)[::-1], window.values))
    with pytest.raises(ValueError, match="no features"):
        KSDetector().fit(FeatureMatrix((), np.empty((100, 0))))
    with pytest.raises(ValidationError):
        KSConfig(correction="holm")


def test_a_feature_with_too_few_values_is_skipped_and_named() -> None:
    reference, window = normal_pair(seed=2)
    reference_values, window_values = reference.values.copy(), window.values.copy()
    reference_values[:960, 1] = np.nan  # 40 left: below min_reference
    window_values[:, 6] = np.nan  # all missing in the window
    window_values[:100, 3] = np.nan  # half missing: still tested on the other 100
    result = KSDetector().fit(matrix(reference_values)).score(matrix(window_values))
    skipped = {a.feature: a for a in result.attributions if a.p_value is None}
    assert set(skipped) == {"f1", "f6"}
    assert "40 non-missing values in the reference" in (skipped["f1"].explanation or "")
    assert "0 non-missing values in the window" in (skipped["f6"].explanation or "")
    assert [a.feature for a in result.attributions[-2:]] == ["f1", "f6"]
    tested = {a.feature: a for a in result.attributions if a.p_value is not None}
    expected = ks_2samp(reference_values[:, 3], window_values[100:, 3])
    assert tested["f3"].statistic == pytest.approx(expected.statistic)
    # Six features tested, so Bonferroni multiplies by six, not eight.
    assert tested["f3"].p_value == pytest.approx(min(1.0, expected.pvalue * 6))


def test_all_features_missing_is_insufficient_data() -> None:
    reference, _ = normal_pair(seed=2)
    with pytest.raises(InsufficientDataError, match="no feature has enough"):
        KSDetector().fit(reference).score(matrix(np.full((50, N_FEATURES), np.nan)))


def test_a_feature_constant_in_the_reference_gets_a_finite_effect() -> None:
    rng = np.random.default_rng(0)
    reference = FeatureMatrix(
        ("slice_mm", "noise"), np.column_stack([np.full(200, 1.0), rng.normal(size=200)])
    )
    same = FeatureMatrix(
        ("slice_mm", "noise"), np.column_stack([np.full(50, 1.0), rng.normal(size=50)])
    )
    moved = FeatureMatrix(
        ("slice_mm", "noise"), np.column_stack([np.full(50, 5.0), rng.normal(size=50)])
    )
    detector = KSDetector().fit(reference)
    unchanged = {a.feature: a for a in detector.score(same).attributions}
    assert unchanged["slice_mm"].effect_size == 0.0
    result = detector.score(moved)
    assert result.is_drift
    assert result.attributions[0].feature == "slice_mm"
    assert np.isfinite(result.effect_size) and result.effect_size > 1.0


# -- model scores --------------------------------------------------------------------------------

FINDINGS = ("lesion", "effusion", "nodule")


def beta_scores(rng: np.random.Generator, n: int, lesion_a: float = 2.0) -> dict[str, list[float]]:
    """Scores of three findings; ``lesion_a`` > 2 moves the lesion scores up."""
    return {
        "lesion": list(rng.beta(lesion_a, 5.0, size=n)),
        "effusion": list(rng.beta(1.0, 8.0, size=n)),
        "nodule": list(rng.beta(5.0, 2.0, size=n)),
    }


def test_score_detector_delegates_to_the_ks_statistics() -> None:
    rng = np.random.default_rng(5)
    reference, window = beta_scores(rng, 1000), beta_scores(rng, 200, lesion_a=3.0)
    result = ScoreKSDetector().fit(reference).score(window)
    as_features = KSDetector().fit(to_matrix(reference)).score(to_matrix(window))
    assert result.detector == "score_ks"
    assert result.config_fingerprint == ScoreKSConfig().fingerprint() != KSConfig().fingerprint()
    assert result.statistic == as_features.statistic
    assert result.p_value == as_features.p_value
    lesion = next(a for a in result.attributions if a.feature == "lesion")
    expected = ks_2samp(reference["lesion"], window["lesion"])
    assert lesion.statistic == pytest.approx(expected.statistic)
    assert lesion.explanation is not None
    assert lesion.explanation.startswith("lesion: mean score ")
    assert f"vs reference {np.mean(reference['lesion']):.2f}" in lesion.explanation


def to_matrix(scores: dict[str, list[float]]) -> FeatureMatrix:
    return FeatureMatrix(tuple(scores), np.column_stack(list(scores.values())))


def test_score_detector_false_alarm_share() -> None:
    def alarms(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        detector = ScoreKSDetector().fit(beta_scores(rng, 1000))
        return detector.score(beta_scores(rng, 200)).is_drift

    false_alarms = share(alarms)
    print(f"score KS, 3 findings, same distribution: false alarms {false_alarms}")
    assert false_alarms <= FALSE_ALARM_CEILING


def test_score_detector_detects_a_shifted_score_distribution() -> None:
    def detected(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        detector = ScoreKSDetector().fit(beta_scores(rng, 1000))
        result = detector.score(beta_scores(rng, 200, lesion_a=3.0))
        return result.is_drift and result.attributions[0].feature == "lesion"

    detection = share(detected)
    print(f"score KS, lesion Beta(2,5) -> Beta(3,5): detected and ranked first {detection}")
    assert detection >= 0.95


def test_score_detector_validates_its_input() -> None:
    rng = np.random.default_rng(0)
    detector = ScoreKSDetector()
    with pytest.raises(NotFittedError):
        detector.score(beta_scores(rng, 50))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        detector.fit({"lesion": [0.2] * 99 + [3.5]})
    with pytest.raises(ValueError, match="one score per study"):
        detector.fit({"lesion": [0.2] * 100, "nodule": [0.1] * 99})
    with pytest.raises(ValueError, match="no findings"):
        detector.fit({})
    detector.fit(beta_scores(rng, 100))
    with pytest.raises(InsufficientDataError, match="window has 0 rows"):
        detector.score({finding: [] for finding in FINDINGS})
    unscored = beta_scores(rng, 50)
    unscored["nodule"] = [float("nan")] * 50  # a finding the model did not score is skipped
    result = detector.score(unscored)
    assert [a.feature for a in result.attributions if a.p_value is None] == ["nodule"]


def test_a_constant_reference_value_with_rounding_noise_gives_a_finite_effect() -> None:
    # np.std of 1000 copies of 0.148 is ~3e-17, not 0: the effect must not explode.
    reference = FeatureMatrix(("PixelSpacing",), np.full((1000, 1), 0.148))
    window = FeatureMatrix(("PixelSpacing",), np.full((200, 1), 0.175))
    result = KSDetector().fit(reference).score(window)
    assert result.is_drift
    assert 0.0 < result.effect_size < 10.0
