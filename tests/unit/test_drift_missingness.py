"""The missingness detector: Fisher's exact test per field on categorical or numeric samples.

Seeded like the other drift tests: repetitions draw from ``np.random.default_rng(seed)`` for
seeds 0..199, and a false-alarm share of at most 9% is asked of a 5% level (binomial slack).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import fisher_exact

from monitor.drift.base import DETECTORS, FeatureMatrix, InsufficientDataError, NotFittedError
from monitor.drift.missingness import MissingnessConfig, MissingnessDetector

REPETITIONS = 200
FALSE_ALARM_CEILING = 0.09
MISSING_RATES = {"ConvolutionKernel": 0.02, "PatientAge": 0.1, "Modality": 0.0, "BodyPart": 0.5}


def columns(
    rng: np.random.Generator, n: int, rates: dict[str, float] = MISSING_RATES
) -> dict[str, list[str | None]]:
    """One column per field, each value missing (None) with the field's rate."""
    return {
        name: [None if missing else "x" for missing in rng.random(n) < rate]
        for name, rate in rates.items()
    }


def share(outcome: Callable[[int], bool]) -> float:
    return sum(outcome(seed) for seed in range(REPETITIONS)) / REPETITIONS


def missing_count(values: list[str | None]) -> int:
    return sum(value is None for value in values)


def test_p_values_match_fisher_exact_bonferroni_corrected() -> None:
    rng = np.random.default_rng(0)
    reference = columns(rng, 1000)
    window = columns(rng, 200, {**MISSING_RATES, "ConvolutionKernel": 0.3})
    result = MissingnessDetector().fit(reference).score(window)
    by_field = {a.feature: a for a in result.attributions}
    for name in MISSING_RATES:
        ref_missing, window_missing = missing_count(reference[name]), missing_count(window[name])
        table = [[ref_missing, 1000 - ref_missing], [window_missing, 200 - window_missing]]
        expected_p = min(1.0, fisher_exact(table).pvalue * len(MISSING_RATES))
        assert by_field[name].p_value == pytest.approx(expected_p)
        difference = window_missing / 200 - ref_missing / 1000
        assert by_field[name].statistic == pytest.approx(difference)
        assert by_field[name].effect_size == pytest.approx(abs(difference))
    assert result.effect_size_name == "missing_share_difference"


@pytest.mark.parametrize(
    "config",
    [MissingnessConfig(min_effect_size=0.0), MissingnessConfig()],
    ids=["no-effect-floor", "default"],
)
def test_false_alarm_share_stays_at_the_family_wise_level(config: MissingnessConfig) -> None:
    def alarms(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        detector = MissingnessDetector(config).fit(columns(rng, 1000))
        return detector.score(columns(rng, 200)).is_drift

    false_alarms = share(alarms)
    print(f"missingness floor={config.min_effect_size}, 4 fields: false alarms {false_alarms}")
    assert false_alarms <= FALSE_ALARM_CEILING


def test_two_to_thirty_percent_missing_is_detected_and_explained() -> None:
    raised = {**MISSING_RATES, "ConvolutionKernel": 0.3}

    def detected(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        result = MissingnessDetector().fit(columns(rng, 1000)).score(columns(rng, 200, raised))
        return result.is_drift and result.attributions[0].feature == "ConvolutionKernel"

    detection = share(detected)
    print(f"missingness 2% -> 30%: detected and ranked first {detection}")
    assert detection >= 0.95
    reference = {"ConvolutionKernel": [None] * 20 + ["B30f"] * 980}
    window = {"ConvolutionKernel": [None] * 80 + ["B30f"] * 120}
    result = MissingnessDetector().fit(reference).score(window)
    assert result.attributions[0].explanation == (
        "ConvolutionKernel missing in 40% of the window vs 2% of the reference"
    )


def test_a_field_that_starts_arriving_is_a_change_too() -> None:
    reference = {"PatientAge": [None] * 500 + ["045Y"] * 500}
    window = {"PatientAge": ["045Y"] * 200}
    result = MissingnessDetector().fit(reference).score(window)
    assert result.is_drift
    assert result.attributions[0].statistic == pytest.approx(-0.5)


def test_a_feature_matrix_counts_nan_as_missing() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(1000, 2))
    window = rng.normal(size=(200, 2))
    window[:60, 1] = np.nan
    names = ("KVP", "SliceThickness")
    result = (
        MissingnessDetector()
        .fit(FeatureMatrix(names, reference))
        .score(FeatureMatrix(names, window))
    )
    assert result.is_drift
    assert result.attributions[0].feature == "SliceThickness"
    assert result.effect_size == pytest.approx(0.3)
    # Either kind of sample works against either kind of reference, by field name.
    as_columns: dict[str, list[str | None]] = {
        "KVP": ["x"] * 200,
        "SliceThickness": [None] * 60 + ["x"] * 140,
    }
    assert MissingnessDetector().fit(FeatureMatrix(names, reference)).score(as_columns) == result


def test_all_missing_and_never_missing_fields() -> None:
    reference: dict[str, list[str | None]] = {"Gone": [None] * 100, "Always": ["x"] * 100}
    unchanged: dict[str, list[str | None]] = {"Gone": [None] * 50, "Always": ["x"] * 50}
    result = MissingnessDetector().fit(reference).score(unchanged)
    assert not result.is_drift
    assert {a.feature: a.p_value for a in result.attributions} == {"Gone": 1.0, "Always": 1.0}
    lost = MissingnessDetector().fit(reference).score({"Gone": [None] * 50, "Always": [None] * 50})
    assert lost.is_drift
    assert lost.attributions[0].explanation == (
        "Always missing in 100% of the window vs 0% of the reference"
    )


def test_size_guards_and_contract() -> None:
    rng = np.random.default_rng(2)
    reference, window = columns(rng, 1000), columns(rng, 200)
    with pytest.raises(NotFittedError):
        MissingnessDetector().score(window)
    with pytest.raises(InsufficientDataError, match="reference has 49 rows"):
        MissingnessDetector().fit({name: values[:49] for name, values in reference.items()})
    detector = MissingnessDetector().fit(reference)
    with pytest.raises(InsufficientDataError, match="window has 0 rows"):
        detector.score({name: [] for name in reference})
    with pytest.raises(InsufficientDataError, match="window has 0 rows"):
        detector.score(FeatureMatrix(tuple(reference), np.empty((0, len(reference)))))
    with pytest.raises(ValueError, match="differ"):
        detector.score({"Modality": window["Modality"]})
    with pytest.raises(ValueError, match="one value per event"):
        detector.score({**window, "Modality": window["Modality"][:5]})
    assert DETECTORS["missingness"] is MissingnessDetector
    config = MissingnessConfig(p_value_threshold=0.01)
    first = MissingnessDetector(config).fit(reference).score(window)
    assert first == MissingnessDetector(config).fit(reference).score(window)
    assert first.detector == "missingness"
    assert first.config_fingerprint == config.fingerprint() != MissingnessConfig().fingerprint()
    assert (first.n_reference, first.n_window) == (1000, 200)
