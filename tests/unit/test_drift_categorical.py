"""The chi-square detector for categorical features: statistics, level, power and edge cases.

Seeded like the other drift tests: repetitions draw from ``np.random.default_rng(seed)`` for
seeds 0..199, and a false-alarm share of at most 9% is asked of a 5% level (binomial slack).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy.stats import chi2_contingency, mannwhitneyu
from scipy.stats.contingency import association

from monitor.drift.base import DETECTORS, InsufficientDataError, NotFittedError
from monitor.drift.categorical import ChiSquareConfig, ChiSquareDetector
from monitor.events import AGE_BANDS

REPETITIONS = 200
FALSE_ALARM_CEILING = 0.09

MODALITY = {"CT": 0.5, "MR": 0.3, "CR": 0.2}
MANUFACTURER = {"GE": 0.4, "Siemens": 0.35, "Philips": 0.2, "Canon": 0.05}
KERNEL = {"STANDARD": 0.6, "BONE": 0.25, "LUNG": 0.1, "B30f": 0.02, "B70f": 0.02, "FC01": 0.01}


def draw(rng: np.random.Generator, shares: dict[str, float], n: int) -> list[str | None]:
    drawn: list[str | None] = rng.choice(list(shares), size=n, p=list(shares.values())).tolist()
    return drawn


def sample(
    rng: np.random.Generator, n: int, modality: dict[str, float] = MODALITY
) -> dict[str, list[str | None]]:
    return {
        "Modality": draw(rng, modality, n),
        "Manufacturer": draw(rng, MANUFACTURER, n),
        "ConvolutionKernel": draw(rng, KERNEL, n),
    }


def share(outcome: Callable[[int], bool]) -> float:
    return sum(outcome(seed) for seed in range(REPETITIONS)) / REPETITIONS


def table(reference: Sequence[str | None], window: Sequence[str | None]) -> np.ndarray:
    """2 x K counts over the union of categories, built independently of the detector."""
    categories = sorted({c for c in [*reference, *window] if c is not None})
    return np.array(
        [
            [list(reference).count(c) for c in categories],
            [list(window).count(c) for c in categories],
        ]
    )


# -- statistics against scipy --------------------------------------------------------------------


def test_statistics_match_scipy_on_the_same_table() -> None:
    rng = np.random.default_rng(0)
    reference = sample(rng, 1000)
    window = sample(rng, 200, modality={"CT": 0.4, "MR": 0.3, "CR": 0.2, "DX": 0.1})
    result = ChiSquareDetector().fit(reference).score(window)
    modality = next(a for a in result.attributions if a.feature == "Modality")
    counts = table(reference["Modality"], window["Modality"])
    expected = chi2_contingency(counts, correction=False)
    cramers_v = balanced_v(counts)
    assert modality.statistic == pytest.approx(expected.statistic)
    assert modality.p_value == pytest.approx(min(1.0, expected.pvalue * 3))
    assert modality.effect_size == pytest.approx(max(cramers_v, share_of(window, "DX")))
    assert result.statistic == pytest.approx(max(a.statistic for a in result.attributions))


def balanced_v(counts: np.ndarray) -> float:
    """scipy's Cramér's V of the table with each row scaled to the other's total (integers, so
    both samples weigh the same): V of the category shares."""
    scaled = np.array([counts[0] * counts[1].sum(), counts[1] * counts[0].sum()])
    return float(association(scaled, method="cramer", correction=False))


def test_v_reads_the_same_change_the_same_against_any_reference_size() -> None:
    window = np.array([70, 30])
    short, long = np.array([[850, 150], window]), np.array([[3910, 690], window])
    raw = [association(t, method="cramer", correction=False) for t in (short, long)]
    assert raw[1] < 0.7 * raw[0]  # the raw V shrinks as the reference grows
    for counts in (short, long):
        v = ChiSquareDetector().fit({"View": ["PA"] * counts[0][0] + ["AP"] * counts[0][1]})
        result = v.score({"View": ["PA"] * 70 + ["AP"] * 30})
        assert result.effect_size == pytest.approx(balanced_v(counts))
        assert result.effect_size == pytest.approx(0.1796, abs=1e-3)


def share_of(columns: dict[str, list[str | None]], category: str) -> float:
    return columns["Modality"].count(category) / len(columns["Modality"])


def test_rare_reference_categories_are_pooled_into_other() -> None:
    rng = np.random.default_rng(1)
    kernels = {"STANDARD": 0.6, "BONE": 0.27, "LUNG": 0.1, "B30f": 0.01, "B70f": 0.01, "FC01": 0.01}
    reference = {"ConvolutionKernel": draw(rng, kernels, 1000)}
    window = {"ConvolutionKernel": draw(rng, kernels, 200)}
    result = ChiSquareDetector().fit(reference).score(window)
    # Expected counts in the 200-row window: about 2 for each 1% kernel, under 5: pooled.
    rare = {"B30f", "B70f", "FC01"}
    pooled = np.array(
        [
            [
                *(column.count(c) for c in ("BONE", "LUNG", "STANDARD")),
                sum(column.count(c) for c in rare),
            ]
            for column in (reference["ConvolutionKernel"], window["ConvolutionKernel"])
        ]
    )
    expected = chi2_contingency(pooled, correction=False)
    (attribution,) = result.attributions
    assert attribution.statistic == pytest.approx(expected.statistic)
    assert attribution.p_value == pytest.approx(expected.pvalue)
    unpooled = ChiSquareDetector(ChiSquareConfig(min_expected=0.5)).fit(reference).score(window)
    full = chi2_contingency(
        table(reference["ConvolutionKernel"], window["ConvolutionKernel"]), correction=False
    )
    assert unpooled.attributions[0].statistic == pytest.approx(full.statistic)


# -- level and power -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [ChiSquareConfig(min_effect_size=0.0), ChiSquareConfig()],
    ids=["no-effect-floor", "default"],
)
def test_false_alarm_share_stays_at_the_family_wise_level(config: ChiSquareConfig) -> None:
    def alarms(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        detector = ChiSquareDetector(config).fit(sample(rng, 1000))
        return detector.score(sample(rng, 200)).is_drift

    false_alarms = share(alarms)
    print(f"chi2 floor={config.min_effect_size}, 3 features: false alarms {false_alarms}")
    assert false_alarms <= FALSE_ALARM_CEILING


def test_a_new_category_at_30_percent_is_detected_and_named() -> None:
    with_dx = {"CT": 0.35, "MR": 0.21, "CR": 0.14, "DX": 0.3}

    def detected(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        detector = ChiSquareDetector().fit(sample(rng, 1000))
        result = detector.score(sample(rng, 200, modality=with_dx))
        top = result.attributions[0]
        return result.is_drift and top.feature == "Modality" and "DX" in (top.explanation or "")

    detection = share(detected)
    print(f"chi2 new category at 30%: detected, ranked first and named {detection}")
    assert detection >= 0.95
    rng = np.random.default_rng(0)
    result = ChiSquareDetector().fit(sample(rng, 1000)).score(sample(rng, 200, modality=with_dx))
    explanation = result.attributions[0].explanation or ""
    assert explanation.startswith("Modality = DX: ")
    assert "% of the window, absent from the reference" in explanation


def test_a_proportion_shift_is_detected() -> None:
    swapped = {"CT": 0.3, "MR": 0.5, "CR": 0.2}

    def detected(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        detector = ChiSquareDetector().fit(sample(rng, 1000))
        result = detector.score(sample(rng, 200, modality=swapped))
        return result.is_drift and result.attributions[0].feature == "Modality"

    detection = share(detected)
    print(f"chi2 CT/MR 50/30 -> 30/50: detected and ranked first {detection}")
    assert detection >= 0.95
    rng = np.random.default_rng(0)
    result = ChiSquareDetector().fit(sample(rng, 1000)).score(sample(rng, 200, modality=swapped))
    assert result.effect_size_name == "cramers_v"
    assert "of the window vs" in (result.attributions[0].explanation or "")


# -- edge cases and contract ---------------------------------------------------------------------


def test_unseen_categories_only_in_the_window() -> None:
    reference = {"Modality": ["CT"] * 60}
    window = {"Modality": ["MR"] * 350 + ["CT"] * 150}
    result = ChiSquareDetector().fit(reference).score(window)
    assert result.is_drift
    # V of the shares (0.73) is not diluted by the small reference, so it leads the 70% share.
    counts = np.array([[60, 0], [150, 350]])
    assert result.effect_size_name == "cramers_v"
    assert result.effect_size == pytest.approx(balanced_v(counts))
    assert result.effect_size > 0.7
    expected = chi2_contingency(counts, correction=False)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.attributions[0].explanation == (
        "Modality = MR: 70% of the window, absent from the reference "
        f"(chi-square {expected.statistic:.1f}, Cramér's V {balanced_v(counts):.2f})"
    )


def test_a_single_category_on_both_sides_is_no_drift() -> None:
    result = ChiSquareDetector().fit({"Modality": ["CT"] * 100}).score({"Modality": ["CT"] * 30})
    assert not result.is_drift
    assert (result.statistic, result.p_value, result.effect_size) == (0.0, 1.0, 0.0)
    assert "single category (CT)" in (result.attributions[0].explanation or "")


def test_missing_values_are_excluded_and_all_missing_features_skipped() -> None:
    rng = np.random.default_rng(3)
    reference, window = sample(rng, 1000), sample(rng, 200)
    window["Manufacturer"] = [None] * 200
    window["Modality"][:100] = [None] * 100
    result = ChiSquareDetector().fit(reference).score(window)
    skipped = [a for a in result.attributions if a.p_value is None]
    assert [a.feature for a in skipped] == ["Manufacturer"]
    assert "0 non-missing values in the window" in (skipped[0].explanation or "")
    modality = next(a for a in result.attributions if a.feature == "Modality")
    expected = chi2_contingency(table(reference["Modality"], window["Modality"]), correction=False)
    assert modality.statistic == pytest.approx(expected.statistic)
    with pytest.raises(InsufficientDataError, match="no feature has enough"):
        ChiSquareDetector().fit(reference).score({name: [None] * 50 for name in reference})


def test_size_guards_and_malformed_input() -> None:
    rng = np.random.default_rng(4)
    reference = sample(rng, 1000)
    with pytest.raises(NotFittedError):
        ChiSquareDetector().score(reference)
    with pytest.raises(InsufficientDataError, match="reference has 49 rows"):
        ChiSquareDetector().fit({name: values[:49] for name, values in reference.items()})
    detector = ChiSquareDetector().fit(reference)
    with pytest.raises(InsufficientDataError, match="window has 0 rows"):
        detector.score({name: [] for name in reference})
    with pytest.raises(InsufficientDataError, match="window has 19 rows"):
        detector.score({name: values[:19] for name, values in reference.items()})
    with pytest.raises(ValueError, match="differ"):
        detector.score({"Modality": reference["Modality"]})
    with pytest.raises(ValueError, match="one value per event"):
        detector.score({**reference, "Modality": reference["Modality"][:10]})
    with pytest.raises(ValueError, match="no features"):
        ChiSquareDetector().fit({})


def test_registered_deterministic_and_fingerprinted() -> None:
    assert DETECTORS["chi2"] is ChiSquareDetector
    rng = np.random.default_rng(5)
    reference, window = sample(rng, 1000), sample(rng, 200)
    config = ChiSquareConfig(correction="fdr_bh")
    first = ChiSquareDetector(config).fit(reference).score(window)
    # Column order must not matter for a mapping.
    reordered = dict(reversed(list(window.items())))
    assert first == ChiSquareDetector(config).fit(reference).score(reordered)
    assert first.detector == "chi2"
    assert first.config_fingerprint == config.fingerprint() != ChiSquareConfig().fingerprint()
    assert (first.n_reference, first.n_window) == (1000, 200)


# -- ordered categories (the age band) -----------------------------------------------------------

BANDS = tuple(AGE_BANDS)
AGES = dict(zip(BANDS, np.array([2, 5, 10, 13, 18, 22, 16, 9, 4, 1]) / 100, strict=True))
OLDER = dict(zip(BANDS, np.array([0, 0, 0, 0, 0, 0, 55, 30, 12, 3]) / 100, strict=True))


def ages(rng: np.random.Generator, n: int, older: float = 0.0) -> dict[str, list[str | None]]:
    """Age bands, ``older`` of them from patients of 60 and over (issue 20's population)."""
    k = int(rng.binomial(n, older))
    return {
        "PatientAgeBand": draw(rng, AGES, n - k) + draw(rng, OLDER, k) if k else draw(rng, AGES, n)
    }


def test_the_age_band_is_tested_as_an_order_by_default() -> None:
    assert ChiSquareConfig().ordinal == {"PatientAgeBand": BANDS}
    rng = np.random.default_rng(0)
    reference, window = ages(rng, 4000), ages(rng, 100, older=0.3)
    result = ChiSquareDetector().fit(reference).score(window)
    top = result.attributions[0]
    ranks = {band: i for i, band in enumerate(BANDS)}
    ref = np.array([ranks[b] for b in reference["PatientAgeBand"] if b is not None], float)
    win = np.array([ranks[b] for b in window["PatientAgeBand"] if b is not None], float)
    assert result.effect_size_name == "mean_shift_sd"
    assert top.effect_size == pytest.approx(abs(win.mean() - ref.mean()) / ref.std())
    assert top.p_value_raw == pytest.approx(mannwhitneyu(ref, win, method="asymptotic").pvalue)
    assert (top.explanation or "").startswith("PatientAgeBand ")
    assert " or above: " in (top.explanation or "") and "mean shift" in (top.explanation or "")
    unordered = ChiSquareDetector(ChiSquareConfig(ordinal={})).fit(reference).score(window)
    assert unordered.effect_size_name == "cramers_v"


def test_ordered_bands_keep_the_level_without_a_change() -> None:
    def alarms(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        detector = ChiSquareDetector(ChiSquareConfig(min_effect_size=0.0))
        return detector.fit(ages(rng, 2000)).score(ages(rng, 100)).is_drift

    false_alarms = share(alarms)
    print(f"ordinal age band, no change: false alarms {false_alarms}")
    assert false_alarms <= FALSE_ALARM_CEILING


def test_an_older_population_is_found_more_often_as_an_order() -> None:
    """30 % of the window from patients of 60 and over: one direction, which the rank test sees
    in more windows of 100 than the chi-square over ten bands does (at the same level)."""

    def detected(config: ChiSquareConfig) -> float:
        def one(seed: int) -> bool:
            rng = np.random.default_rng(seed)
            detector = ChiSquareDetector(config).fit(ages(rng, 4000))
            return detector.score(ages(rng, 100, older=0.3)).is_drift

        return share(one)

    ordinal = detected(ChiSquareConfig(p_value_threshold=0.01))
    unordered = detected(ChiSquareConfig(p_value_threshold=0.01, ordinal={}))
    print(f"older population at 30%: detected {ordinal} as an order, {unordered} as labels")
    assert ordinal >= 0.8
    assert ordinal > unordered


def test_a_value_outside_the_order_is_tested_by_chi_square() -> None:
    rng = np.random.default_rng(1)
    reference = ages(rng, 1000)
    window = {"PatientAgeBand": ["unknown"] * 40 + ages(rng, 60)["PatientAgeBand"]}
    result = ChiSquareDetector().fit(reference).score(window)
    assert result.is_drift
    assert result.effect_size_name != "mean_shift_sd"
    assert (result.attributions[0].explanation or "").startswith("PatientAgeBand = unknown: 40%")
    single = {"PatientAgeBand": ["40-49"] * 500}
    shifted = {"PatientAgeBand": ["40-49"] * 50 + ["50-59"] * 50}
    # A reference of one band has no spread to measure a shift in: the chi-square decides.
    assert ChiSquareDetector().fit(single).score(shifted).effect_size_name != "mean_shift_sd"


# -- sparse 2 x 2 tables: Fisher's exact p-value -------------------------------------------------

BODY_PART = {"CHEST": 0.996, "NON GRID CHEST": 0.0025, "PORTABLE CHEST": 0.0015}


def test_a_rare_pooled_category_keeps_the_level_with_the_exact_test() -> None:
    """OpenI's BodyPartExamined: two rare categories pooled into "(other)" leave a 2 x 2 table
    whose window expects a fraction of one event; the chi-square's tail is liberal there, and
    Fisher's exact p-value is not (tested at the 0.001 of a feature in the engine)."""

    def alarms(config: ChiSquareConfig) -> float:
        def one(seed: int) -> bool:
            rng = np.random.default_rng(seed)
            # Every category in the reference, so that no window category is unseen.
            reference: dict[str, list[str | None]] = {
                "BodyPartExamined": ["CHEST"] * 2988
                + ["NON GRID CHEST"] * 7
                + ["PORTABLE CHEST"] * 5
            }
            detector = ChiSquareDetector(config).fit(reference)
            window = {"BodyPartExamined": draw(rng, BODY_PART, 100)}
            return detector.score(window).is_drift

        return sum(one(seed) for seed in range(1000)) / 1000

    level = {"p_value_threshold": 0.001, "min_effect_size": 0.0}
    exact = alarms(ChiSquareConfig(**level))
    approximate = alarms(ChiSquareConfig(**level, exact_2x2=False))
    print(f"rare pooled category, level 0.001: {exact} exact, {approximate} chi-square")
    assert ChiSquareConfig().exact_2x2
    assert exact <= 0.003
    assert approximate > exact


def test_a_new_category_is_still_found_with_the_exact_test() -> None:
    rng = np.random.default_rng(3)
    reference = {"Modality": draw(rng, {"CR": 1.0}, 3000)}
    window = {"Modality": ["DX"] * 30 + draw(rng, {"CR": 1.0}, 70)}
    result = (
        ChiSquareDetector(ChiSquareConfig(p_value_threshold=0.001)).fit(reference).score(window)
    )
    assert result.is_drift
    assert result.p_value < 1e-20
    assert (result.attributions[0].explanation or "").startswith("Modality = DX: 30% of the window")
